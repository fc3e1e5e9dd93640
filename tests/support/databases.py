"""Helpers of the DatabaseManager tests: settings for a manager on the test server, a mapped
model in a private schema, and an error raised by test code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.config import Settings


class Boom(Exception):
    """Raised by test code inside a session or connection block."""


def item_model(schema: str) -> Any:
    """A mapped class `Item(id, name)` whose table lives in `schema` (one registry per test)."""

    class Base(DeclarativeBase):
        metadata = MetaData(schema=schema)

    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    return Item


def manager_settings(
    database_url: str, app_name: str, environment: str = "development", **db: Any
) -> Settings:
    """Settings for a manager with a small pool (2, no overflow, 2 s wait); `db` overrides."""
    database = {"url": database_url, "pool_size": 2, "max_overflow": 0, "pool_timeout": 2.0}
    return Settings(
        _env_file=None,
        app={"name": app_name, "environment": environment},
        database={**database, **db},
        # Production refuses the local default; these tests never reach Redis.
        redis={"url": "redis://127.0.0.1:6379/0"},
    )


async def cancel_mid_query(query: Callable[[anyio.Event], Awaitable[None]]) -> None:
    """Run `query(started)`, which sets `started` just before a long statement, and cancel it
    0.2 s later, as a client that goes away does (an anyio cancel scope); bounded at 5 s."""
    started = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(query, started)
            await started.wait()
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()
