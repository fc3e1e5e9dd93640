"""`DatabaseManager.read_connection()`: the Core read fast path on a real PostgreSQL. Reads on the
read-only autocommit pool (or a replica), writes refused by the server, the connection back in its
pool however the block ends. The breaker in front of the primary is tested with the sessions'
(`test_database.py::test_refused_connections_open_the_breaker_and_then_fail_fast`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import await_only as await_

import core.database.manager as manager_module
import core.database.release as release_module
from core.database import DatabaseManager
from core.resilience import BreakerState
from tests.support.databases import Boom, cancel_mid_query, manager_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(database_url: str, app_name: str, pg_schema: str) -> AsyncIterator[DatabaseManager]:
    async with DatabaseManager(
        manager_settings(database_url, app_name, search_path=pg_schema, pool_size=1)
    ) as m:
        async with m.get_session() as session:
            await session.execute(text("CREATE TABLE items (id int PRIMARY KEY, name text)"))
            await session.execute(text("INSERT INTO items VALUES (7, 'seven')"))
        yield m


def _checked_out(db: DatabaseManager) -> tuple[int, int]:
    return db.engine.pool.checkedout(), db.read_engine.pool.checkedout()


async def _pid(db: DatabaseManager) -> int:
    async with db.read_connection() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_reads_on_the_read_only_pool_and_gives_the_connection_back(
    db: DatabaseManager,
) -> None:
    async with db.read_connection() as conn:
        row = (await conn.execute(text("SELECT id, name FROM items WHERE id = 7"))).one()
        assert tuple(row) == (7, "seven")
        assert (await conn.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
        assert _checked_out(db) == (0, 1)
    assert _checked_out(db) == (0, 0)


async def test_each_statement_runs_on_its_own(db: DatabaseManager) -> None:
    # Autocommit: no BEGIN, so every statement is its own transaction with its own start time
    # (inside one transaction `now()` would not move).
    async with db.read_connection() as conn:
        first = (await conn.execute(text("SELECT now()"))).scalar_one()
        await conn.execute(text("SELECT pg_sleep(0.02)"))
        second = (await conn.execute(text("SELECT now()"))).scalar_one()
    assert second > first


async def test_writes_are_refused_by_postgres(db: DatabaseManager, probe: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as info:
        async with db.read_connection() as conn:
            await conn.execute(text("INSERT INTO items VALUES (8, 'eight')"))
    assert "read-only transaction" in str(info.value)
    assert _checked_out(db) == (0, 0)
    async with db.read_connection() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM items"))).scalar_one()
    assert count == 1


async def test_an_error_in_the_block_propagates_and_the_connection_is_reused(
    db: DatabaseManager,
) -> None:
    pid = await _pid(db)

    async def handler() -> None:
        async with db.read_connection() as conn:
            await conn.execute(text("SELECT 1"))
            raise Boom("in the handler")

    with pytest.raises(Boom):
        await handler()
    assert _checked_out(db) == (0, 0)
    assert await _pid(db) == pid  # returned to the one-connection pool, not thrown away


async def test_cancelled_mid_query_gives_the_connection_back(
    db: DatabaseManager, probe: AsyncEngine, app_name: str
) -> None:

    async def slow(started: anyio.Event) -> None:
        async with db.read_connection() as conn:
            started.set()
            await conn.execute(text("SELECT pg_sleep(5)"))

    await cancel_mid_query(slow)
    assert _checked_out(db) == (0, 0)
    with anyio.fail_after(5):
        # The pool still serves, and the server is not left running the cancelled query.
        async with db.read_connection() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        while True:
            async with probe.connect() as conn:
                busy = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                        "AND query LIKE '%pg_sleep(5)%' AND state = 'active'"
                    ),
                    {"n": app_name},
                )
            if busy == 0:
                break
            await anyio.sleep(0.05)


async def test_cancelled_between_statements_the_connection_is_reused(
    db: DatabaseManager,
) -> None:
    # The client went away while the handler awaited something else: the connection is idle,
    # so it goes back to the pool (the one-connection pool serves the same backend next).
    pid = await _pid(db)
    inside = anyio.Event()

    async def handler() -> None:
        async with db.read_connection() as conn:
            await conn.execute(text("SELECT 1"))
            inside.set()
            await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(handler)
            await inside.wait()
            tg.cancel_scope.cancel()
    assert _checked_out(db) == (0, 0)
    with anyio.fail_after(5):
        assert await _pid(db) == pid


async def test_an_app_error_does_not_count_against_the_breaker(db: DatabaseManager) -> None:
    for _ in range(db.settings.resilience.breaker_failure_threshold + 1):
        with pytest.raises(Boom):
            async with db.read_connection():
                raise Boom("not the database's fault")
    assert db.breaker.state is BreakerState.CLOSED
    assert db.breaker.snapshot().consecutive_failures == 0


async def test_reads_go_to_a_replica_when_one_is_configured(
    database_url: str, app_name: str
) -> None:
    settings = manager_settings(database_url, app_name, pool_size=1, replica_urls=[database_url])
    async with DatabaseManager(settings) as db:
        assert db.replicas is not None
        [replica] = list(db.replicas)
        for _ in range(2):
            async with db.read_connection() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
                # A replica's pool is read-only like the primary's read pool.
                assert (await conn.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
                assert replica.engine.pool.checkedout() == 1
                assert _checked_out(db) == (0, 0)
            assert replica.engine.pool.checkedout() == 0


async def test_a_replica_connects_with_its_own_secret_options(
    database_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each URL's secret query options (sslpassword...) reach asyncpg for that server only.
    seen: list[str] = []
    real = manager_module.shielded_connect

    async def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(str(kwargs.get("dsn", "")))
        return await real(*args, **kwargs)

    monkeypatch.setattr(manager_module, "shielded_connect", recording)
    settings = manager_settings(
        database_url + "?sslpassword=primary-key",
        app_name,
        replica_urls=[database_url + "?sslpassword=replica-key"],
    )
    async with DatabaseManager(settings) as db, db.read_connection() as conn:
        await conn.execute(text("SELECT 1"))
    assert seen == ["postgresql://?sslpassword=replica-key"]


# --- a connection that cannot be given back cleanly -------------------------------------------


def _break(monkeypatch: pytest.MonkeyPatch, name: str, broken: Any) -> dict[str, Any]:
    """Replace `AsyncConnection.<name>` for the connection put in the returned dict only."""
    real = getattr(AsyncConnection, name)
    target: dict[str, Any] = {}

    async def method(self: AsyncConnection, *args: Any) -> Any:
        if self is target.get("conn"):
            return await broken(real, self, *args)
        return await real(self, *args)

    monkeypatch.setattr(AsyncConnection, name, method)
    return target


def _break_close(monkeypatch: pytest.MonkeyPatch, broken: Any) -> dict[str, Any]:
    """Replace the close of the connection put in the returned dict only. The pool is given
    connections back by the synchronous close under `AsyncConnection`, so that is the one
    replaced: `broken` may ask for I/O with `await_()`, as a close that rolls back does."""
    real = Connection.close
    target: dict[str, Any] = {}

    def close(self: Connection) -> None:
        conn = target.get("conn")
        if conn is not None and self is conn.sync_connection:
            broken(real, self)
        else:
            real(self)

    monkeypatch.setattr(Connection, "close", close)
    return target


@pytest.mark.parametrize("close", ["hangs", "fails"])
async def test_a_close_that_hangs_or_fails_is_bounded_and_the_connection_thrown_away(
    db: DatabaseManager,
    close: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleanup = 0.3
    monkeypatch.setattr(release_module, "CLEANUP_TIMEOUT", cleanup)
    caplog.set_level(logging.WARNING, logger="dualcore.database")
    before = await _pid(db)

    def bad_close(real: Any, conn: Connection) -> None:
        if close == "hangs":
            await_(anyio.sleep(60))
        raise OSError("close failed")

    target = _break_close(monkeypatch, bad_close)

    async def handler_fails() -> None:
        async with db.read_connection() as conn:
            target["conn"] = conn
            raise Boom("handler failed")

    started = anyio.current_time()
    with anyio.fail_after(cleanup + 10), pytest.raises(Boom):
        await handler_fails()
    if close == "hangs":
        assert anyio.current_time() - started >= cleanup
    expected = "TimeoutError" if close == "hangs" else "OSError"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"connection close failed ({expected}); invalidating it")
    ]
    # Thrown away, not returned: nothing checked out, and the next read gets a new backend.
    assert _checked_out(db) == (0, 0)
    assert await _pid(db) != before


async def test_a_failure_to_throw_the_connection_away_is_logged_and_the_handler_error_kept(
    db: DatabaseManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dualcore.database")

    def failing_close(real: Any, conn: Connection) -> None:
        raise OSError("close failed")

    async def invalidate_then_fail(real: Any, conn: AsyncConnection, *args: Any) -> None:
        await real(conn, *args)
        raise RuntimeError("invalidation failed")

    closing = _break_close(monkeypatch, failing_close)
    invalidating = _break(monkeypatch, "invalidate", invalidate_then_fail)

    async def handler_fails() -> None:
        async with db.read_connection() as conn:
            closing["conn"] = invalidating["conn"] = conn
            raise Boom("handler failed")

    with anyio.fail_after(10), pytest.raises(Boom):
        await handler_fails()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["invalidating a connection failed"]
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], RuntimeError)
    assert _checked_out(db) == (0, 0)
