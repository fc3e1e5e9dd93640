"""Data access for users: SQL only, no caching, no HTTP."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from examples.users.models import User
from examples.users.schemas import UserCreate, UserUpdate


class UserRepository:
    """Reads and writes `User` rows through one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> User | None:
        """The user with this id, or None."""
        return await self.session.get(User, user_id)

    async def list(self, *, limit: int, offset: int) -> list[User]:
        """Users ordered by creation time, then id (a stable order for paging)."""
        stmt = select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
        return list((await self.session.scalars(stmt)).all())

    async def add(self, data: UserCreate) -> User:
        """Insert a user; server defaults are loaded by the flush."""
        user = User(email=data.email, name=data.name)
        self.session.add(user)
        await self.session.flush()
        await self.session.refresh(user)
        return user

    async def update(self, user: User, data: UserUpdate) -> User:
        """Apply the fields given in `data`."""
        for field, value in data.model_dump(exclude_unset=True, exclude_none=True).items():
            setattr(user, field, value)
        await self.session.flush()
        await self.session.refresh(user)
        return user

    async def delete(self, user: User) -> None:
        """Delete a user."""
        await self.session.delete(user)
        await self.session.flush()
