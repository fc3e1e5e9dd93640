"""The seed design's model and repository, shared by its FastAPI and Litestar apps in the tests.

`SeedUser.email` is unique with a deferred check, so a duplicate is accepted by the INSERT and
refused only at COMMIT: the case where a commit that runs after the response would lie.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import String, UniqueConstraint, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core import Base

TAKEN = "taken@example.com"


class SeedUser(Base):
    __tablename__ = "seed_users"
    __table_args__ = (UniqueConstraint("email", deferrable=True, initially="DEFERRED"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))


class UserRepository:
    """The seed's repository over one session."""

    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    async def get(self, user_id: int) -> dict[str, Any] | None:
        user = await self.db.scalar(select(SeedUser).where(SeedUser.id == user_id))
        return None if user is None else {"id": user.id, "email": user.email, "name": user.name}


async def cached_user(
    db: AsyncSession, redis: Redis, prefix: str, user_id: int
) -> dict[str, Any] | None:
    """The seed service's `get_cached_user`: Redis first, else the database (then cached)."""
    key = f"{prefix}seed-user:{user_id}"
    cached = await redis.get(key)
    if cached is not None:
        return dict(json.loads(cached), cached=True)
    user = await UserRepository(db).get(user_id)
    if user is not None:
        await redis.set(key, json.dumps(user), ex=60)
    return user


async def write(db: AsyncSession, body: dict[str, str]) -> dict[str, bool]:
    """What every write route does: two rows, then the failure the request asks for.

    `email` may be `TAKEN` (the commit fails on the deferred constraint); `also` is always new,
    so finding it stored afterwards means a failed request kept part of its work. `fail`:
    "terminate" kills this session's own server connection so the COMMIT cannot reach the
    server; "raise" raises after writing.
    """
    db.add_all([SeedUser(email=body["email"], name="a"), SeedUser(email=body["also"], name="b")])
    await db.flush()
    if body.get("fail") == "terminate":
        pid = await db.scalar(text("SELECT pg_backend_pid()"))
        async with db.bind.connect() as other:  # type: ignore[union-attr]
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await other.commit()
    elif body.get("fail") == "raise":
        raise RuntimeError("failed after writing")
    return {"written": True}
