"""DatabaseManager.run_in_transaction on a real PostgreSQL: real serialization failures and
deadlocks re-run the whole unit of work, never more than `attempts` times; other errors are
raised at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.config import Settings
from core.database import DatabaseManager
from core.resilience import retry_attempts, sqlstate_of

pytestmark = pytest.mark.anyio

SERIALIZABLE = text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
# Deadlocks are found after this long instead of the server's default second.
QUICK_DEADLOCKS = text("SET LOCAL deadlock_timeout = '50ms'")

Unit = Callable[[AsyncSession], Awaitable[Any]]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[DatabaseManager]:
    settings = Settings(
        _env_file=None,
        app={"name": f"dctest-{uuid.uuid4().hex[:12]}"},
        database={"url": database_url, "pool_size": 4, "max_overflow": 0, "pool_timeout": 5},
        # Short pauses between attempts; the attempt limit is what these tests are about.
        resilience={"retry_base_delay": 0.01, "retry_max_delay": 0.05, "retry_max_time": 30},
    )
    async with DatabaseManager(settings) as manager:
        yield manager


@pytest.fixture
async def counters(probe: AsyncEngine, pg_schema: str) -> str:
    """A table of two counters, (1, 0) and (2, 0)."""
    table = f'"{pg_schema}".counters'
    async with probe.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"))
        await conn.execute(text(f"INSERT INTO {table} VALUES (1, 0), (2, 0)"))
    return table


async def _values(probe: AsyncEngine, table: str) -> list[int]:
    async with probe.connect() as conn:
        rows = await conn.execute(text(f"SELECT n FROM {table} ORDER BY id"))
        return [int(n) for n in rows.scalars()]


async def _run_both(db: DatabaseManager, units: dict[str, Unit], attempts: int) -> dict[str, Any]:
    """Run the units concurrently, each through `run_in_transaction`; their results by name."""
    results: dict[str, Any] = {}

    async def run(name: str) -> None:
        results[name] = await db.run_in_transaction(units[name], attempts=attempts)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for name in units:
                tg.start_soon(run, name)
    return results


async def test_a_serialization_failure_reruns_the_whole_unit(
    db: DatabaseManager, counters: str, probe: AsyncEngine
) -> None:
    # Write skew: each unit reads both counters and sets its own to their sum + 1. Run one after
    # the other, the second sees the first's write; run side by side, PostgreSQL refuses one
    # of them (40001), which must start over from its read.
    calls = {"a": 0, "b": 0}
    have_read = {"a": anyio.Event(), "b": anyio.Event()}
    failures: list[str | None] = []

    def unit(me: str, other: str, row: int) -> Unit:
        async def fn(session: AsyncSession) -> int:
            calls[me] += 1
            await session.execute(SERIALIZABLE)
            total = int((await session.execute(text(f"SELECT sum(n) FROM {counters}"))).scalar())
            if calls[me] == 1:
                have_read[me].set()
                await have_read[other].wait()  # both have read before either writes
            try:
                await session.execute(
                    text(f"UPDATE {counters} SET n = :n WHERE id = :id"),
                    {"n": total + 1, "id": row},
                )
            except DBAPIError as exc:
                failures.append(sqlstate_of(exc))
                raise
            return total

        return fn

    results = await _run_both(db, {"a": unit("a", "b", 1), "b": unit("b", "a", 2)}, attempts=3)

    # One unit ran once; the other was refused (at its write or its commit) and ran again.
    assert sorted(calls.values()) == [1, 2]
    assert failures in ([], ["40001"])
    retried = "a" if calls["a"] == 2 else "b"
    # Its second run read the other's committed write: a serial outcome, nothing lost.
    assert results[retried] == 1
    assert sorted(results.values()) == [0, 1]
    assert sorted(await _values(probe, counters)) == [1, 2]


async def test_a_deadlock_reruns_the_whole_unit(
    db: DatabaseManager, counters: str, probe: AsyncEngine
) -> None:
    # Two units increment both counters, locking them in opposite orders; PostgreSQL breaks
    # the deadlock by failing one (40P01), which must start over and redo both increments.
    calls = {"a": 0, "b": 0}
    holds_first = {"a": anyio.Event(), "b": anyio.Event()}
    failures: list[str | None] = []

    def increment(row: int) -> Any:
        return text(f"UPDATE {counters} SET n = n + 1 WHERE id = {row}")

    def unit(me: str, other: str, first: int, second: int) -> Unit:
        async def fn(session: AsyncSession) -> str:
            calls[me] += 1
            await session.execute(QUICK_DEADLOCKS)
            await session.execute(increment(first))
            if calls[me] == 1:
                holds_first[me].set()
                await holds_first[other].wait()  # each holds one row the other wants
            try:
                await session.execute(increment(second))
            except DBAPIError as exc:
                failures.append(sqlstate_of(exc))
                raise
            return me

        return fn

    results = await _run_both(
        db, {"a": unit("a", "b", 1, 2), "b": unit("b", "a", 2, 1)}, attempts=3
    )

    assert failures == ["40P01"]
    assert sorted(calls.values()) == [1, 2]
    assert results == {"a": "a", "b": "b"}
    # Both units committed in full, the retried one exactly once: each counter went up twice.
    assert await _values(probe, counters) == [2, 2]


@pytest.mark.parametrize("attempts", [1, 3])
async def test_retries_stop_after_attempts(
    db: DatabaseManager, counters: str, probe: AsyncEngine, attempts: int
) -> None:
    # Another client changes the row after every attempt took its snapshot and before it
    # writes: every attempt is refused with 40001.
    calls = 0

    async def fn(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(SERIALIZABLE)
        await session.execute(text(f"SELECT n FROM {counters} WHERE id = 1"))  # the snapshot
        async with probe.begin() as conn:
            await conn.execute(text(f"UPDATE {counters} SET n = n + 100 WHERE id = 1"))
        await session.execute(text(f"UPDATE {counters} SET n = n + 1 WHERE id = 1"))

    with anyio.fail_after(20), pytest.raises(DBAPIError) as info:
        await db.run_in_transaction(fn, attempts=attempts)
    assert calls == attempts
    assert sqlstate_of(info.value) == "40001"
    assert retry_attempts(info.value) == attempts
    # Only the other client's changes are stored; no attempt of the unit left anything.
    assert await _values(probe, counters) == [100 * attempts, 0]
    assert db.engine.pool.checkedout() == 0


@pytest.mark.parametrize("error", ["unique violation", "ValueError"])
async def test_other_errors_are_not_retried(
    db: DatabaseManager, counters: str, probe: AsyncEngine, error: str
) -> None:
    calls = 0

    async def fn(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text(f"UPDATE {counters} SET n = 5 WHERE id = 2"))
        if error == "unique violation":
            await session.execute(text(f"INSERT INTO {counters} VALUES (1, 0)"))
        raise ValueError("a business rule said no")

    expected = IntegrityError if error == "unique violation" else ValueError
    with anyio.fail_after(20), pytest.raises(expected) as info:
        await db.run_in_transaction(fn, attempts=5)
    assert calls == 1
    if error == "unique violation":
        assert sqlstate_of(info.value) == "23505"
    assert await _values(probe, counters) == [0, 0]  # the unit's first write was rolled back


async def test_a_clean_unit_runs_once_and_commits(
    db: DatabaseManager, counters: str, probe: AsyncEngine
) -> None:
    calls = 0

    async def fn(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        await session.execute(SERIALIZABLE)
        await session.execute(text(f"UPDATE {counters} SET n = n + 7 WHERE id = 1"))
        return int((await session.execute(text(f"SELECT n FROM {counters} WHERE id = 1"))).scalar())

    assert await db.run_in_transaction(fn) == 7
    assert calls == 1
    assert await _values(probe, counters) == [7, 0]
