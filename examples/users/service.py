"""Business logic for users, including the cached lookup and its invalidation."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from core.cache import Cache
from examples.users.repository import UserRepository
from examples.users.schemas import UserCreate, UserOut, UserPage, UserUpdate

USER_TTL = 300.0


def user_key(user_id: uuid.UUID) -> tuple[str, str]:
    """Cache key parts of one user."""
    return ("user", str(user_id))


class UserService:
    """Use cases for users. Writes commit before invalidating the cache, so a reader can
    never re-cache the old row after the invalidation."""

    def __init__(self, session: AsyncSession, cache: Cache) -> None:
        self.repo = UserRepository(session)
        self.session = session
        self.cache = cache

    async def create(self, data: UserCreate) -> UserOut:
        """Create a user; raises IntegrityError (answered 409) if the email is taken."""
        user = await self.repo.add(data)
        out = UserOut.model_validate(user)
        await self.session.commit()
        return out

    async def get(self, user_id: uuid.UUID) -> UserOut | None:
        """Read a user from the database."""
        user = await self.repo.get(user_id)
        return UserOut.model_validate(user) if user is not None else None

    async def get_cached_user(self, user_id: uuid.UUID) -> UserOut | None:
        """Read a user through the cache; a missing user is not cached."""

        async def load() -> UserOut:
            user = await self.get(user_id)
            if user is None:
                raise _NotFound
            return user

        try:
            return await self.cache.get_or_set(user_key(user_id), load, ttl=USER_TTL, type_=UserOut)
        except _NotFound:
            return None

    async def list(self, *, limit: int, offset: int) -> UserPage:
        """One page of users."""
        rows = await self.repo.list(limit=limit + 1, offset=offset)
        items = [UserOut.model_validate(u) for u in rows[:limit]]
        next_offset = offset + limit if len(rows) > limit else None
        return UserPage(items=items, limit=limit, offset=offset, next_offset=next_offset)

    async def update(self, user_id: uuid.UUID, data: UserUpdate) -> UserOut | None:
        """Update a user, commit, then drop its cache entry."""
        user = await self.repo.get(user_id)
        if user is None:
            return None
        out = UserOut.model_validate(await self.repo.update(user, data))
        await self.session.commit()
        await self.cache.delete(user_key(user_id))
        return out

    async def delete(self, user_id: uuid.UUID) -> bool:
        """Delete a user, commit, then drop its cache entry; False if there was none."""
        user = await self.repo.get(user_id)
        if user is None:
            return False
        await self.repo.delete(user)
        await self.session.commit()
        await self.cache.delete(user_key(user_id))
        return True


class _NotFound(Exception):
    """Raised by the loader so that a missing user is not cached."""
