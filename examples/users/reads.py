"""Hot reads on the Core read fast path: one statement on a read connection, no ORM session.

Routes that only read one user use these; everything that writes goes through `UserService`
(and its session), which also drops the cache entries read here.
"""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from core.cache import Cache
from core.database import DatabaseManager
from examples.users.models import User
from examples.users.schemas import UserOut
from examples.users.service import USER_TTL, user_key

_BY_ID = select(User.__table__).where(User.__table__.c.id == bindparam("user_id"))


class _NotFound(Exception):
    """Raised by a loader so that a missing user is not cached."""


async def read_user(conn: AsyncConnection, user_id: uuid.UUID) -> UserOut | None:
    """The user with this id, read on `conn` (a `read_connection()`), or None."""
    row = (await conn.execute(_BY_ID, {"user_id": user_id})).first()
    return UserOut.model_validate(row) if row is not None else None


async def read_user_cached(cache: Cache, db: DatabaseManager, user_id: uuid.UUID) -> UserOut | None:
    """`read_user` through the cache: a hit takes no database connection at all."""

    async def load() -> UserOut:
        async with db.read_connection() as conn:
            user = await read_user(conn, user_id)
        if user is None:
            raise _NotFound
        return user

    try:
        return await cache.get_or_set(user_key(user_id), load, ttl=USER_TTL, type_=UserOut)
    except _NotFound:
        return None
