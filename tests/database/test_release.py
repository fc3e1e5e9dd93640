"""Handing sessions and connections back to the pool, on a real PostgreSQL: a close that needs
no I/O finishes in the caller with no task and no shielding; one that needs I/O finishes in a
shielded task of its own even when the caller is cancelled meanwhile; either sees the caller's
context variables."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import anyio
import pytest
from sqlalchemy import event, text
from sqlalchemy.util import await_only as await_

import core.database.release as release_module
from core.database import DatabaseManager
from tests.support.databases import Boom, manager_settings

pytestmark = pytest.mark.anyio

REQUEST = contextvars.ContextVar[str | None]("request", default=None)


@pytest.fixture
async def db(database_url: str, app_name: str) -> AsyncIterator[DatabaseManager]:
    async with DatabaseManager(manager_settings(database_url, app_name)) as m:
        yield m


def _checked_out(db: DatabaseManager) -> tuple[int, int]:
    return db.engine.pool.checkedout(), db.read_engine.pool.checkedout()


@contextmanager
def _counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count the tasks the loop creates and the cleanups handed to `finish_shielded` (which, on
    3.12+, may build its task directly, past the loop's task factory)."""
    counts = {"tasks": 0, "shielded": 0}
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        counts["tasks"] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    real = release_module.finish_shielded

    async def shielded(aw: Any) -> Any:
        counts["shielded"] += 1
        return await real(aw)

    monkeypatch.setattr(release_module, "finish_shielded", shielded)
    loop.set_task_factory(factory)
    try:
        yield counts
    finally:
        loop.set_task_factory(previous)


async def test_reads_hand_their_connection_back_with_no_task(
    db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def reads() -> None:
        async with db.read_connection() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        async with db.get_session(read_only=True) as session:
            assert (await session.execute(text("SELECT 2"))).scalar_one() == 2
        async with db.get_session() as session:  # committed: nothing left to roll back
            assert (await session.execute(text("SELECT 3"))).scalar_one() == 3

    await reads()  # connections opened outside the count
    with _counting(monkeypatch) as counts:
        for _ in range(20):
            await reads()
    assert counts == {"tasks": 0, "shielded": 0}
    assert _checked_out(db) == (0, 0)


async def test_a_rollback_finishes_shielded_when_the_caller_is_cancelled(
    db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler fails mid-transaction, so closing its session must ROLLBACK (I/O); the caller
    # is cancelled while that is under way. The rollback still completes and the connection
    # goes back clean; the cancellation is delivered once it has.
    done: list[str] = []

    def slow_rollback(conn: Any) -> None:
        await_(asyncio.sleep(0.3))
        done.append("rolled back")

    event.listen(db.engine.sync_engine, "rollback", slow_rollback)
    rolling_back = anyio.Event()

    async def handler() -> None:
        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))
            rolling_back.set()
            raise Boom("handler failed")

    try:
        with _counting(monkeypatch) as counts, anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(handler)
                await rolling_back.wait()
                await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
    finally:
        event.remove(db.engine.sync_engine, "rollback", slow_rollback)
    assert done == ["rolled back"]
    assert counts["shielded"] == 1
    assert _checked_out(db) == (0, 0)
    async with db.get_session() as session:  # the pool still serves
        assert (await session.execute(text("SELECT 4"))).scalar_one() == 4


@pytest.mark.parametrize("needs_io", [False, True], ids=["no-io", "rollback"])
async def test_the_close_sees_the_callers_context(db: DatabaseManager, needs_io: bool) -> None:
    seen: list[str | None] = []

    def checkin(*args: Any) -> None:
        seen.append(REQUEST.get())

    pool = db.engine.pool
    event.listen(pool, "checkin", checkin)
    token = REQUEST.set("request-7")
    try:
        with pytest.raises(Boom) if needs_io else nullcontext():
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
                if needs_io:
                    raise Boom("rolled back on close")
    finally:
        REQUEST.reset(token)
        event.remove(pool, "checkin", checkin)
    assert seen == ["request-7"]
