"""HealthRegistry under a flood of probes: one shared run, a reused report, real PostgreSQL.

Queries are counted twice: by the probe's caller and by the engine itself, through a
`before_cursor_execute` listener on the manager's read engine (the one `ping()` uses).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
from sqlalchemy import event

from core.config import Settings
from core.database import DatabaseManager
from core.health import HealthRegistry, HealthReport
from core.redis_client import RedisManager

pytestmark = pytest.mark.anyio

FLOOD = 300
# The checks' timeout in these tests, and so the bound on anything a run waits for.
TIMEOUT = 2.0


class Counted:
    """A probe that counts its calls."""

    def __init__(self, probe: Callable[[], Awaitable[Any]]) -> None:
        self.probe = probe
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        return await self.probe()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[DatabaseManager]:
    settings = Settings(_env_file=None, database={"url": database_url, "pool_size": 2})
    async with DatabaseManager(settings) as manager:
        await manager.ping()  # connected before any statement is counted
        yield manager


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisManager]:
    async with RedisManager(Settings(_env_file=None, redis={"url": redis_url})) as manager:
        yield manager


@pytest.fixture
def statements(db: DatabaseManager) -> Iterator[list[str]]:
    """Every statement the database manager's read engine sends from now on."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = db.read_engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


def statuses(report: HealthReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


async def test_a_flood_of_concurrent_probes_costs_one_query(
    db: DatabaseManager, redis: RedisManager, statements: list[str]
) -> None:
    registry = HealthRegistry(cache_for=0)
    postgresql, redis_ping = Counted(db.ping), Counted(redis.ping)
    registry.add("postgresql", postgresql, timeout=TIMEOUT)
    registry.add("redis", redis_ping, timeout=TIMEOUT)

    reports = await asyncio.gather(*(registry.run() for _ in range(FLOOD)))

    assert (postgresql.calls, redis_ping.calls) == (1, 1)
    assert statements == ["SELECT 1"]
    assert all(r.ready for r in reports)
    # Every caller got the same measurement, not a copy of it with invented latencies.
    assert len({r.checks for r in reports}) == 1
    assert {c.status for c in reports[0].checks} == {"ok"}


async def test_probes_within_cache_for_reuse_the_report_and_say_how_old_it_is(
    db: DatabaseManager, redis: RedisManager, statements: list[str]
) -> None:
    # Far longer than this test takes, however busy the machine.
    registry = HealthRegistry(cache_for=60)
    postgresql = Counted(db.ping)
    registry.add("postgresql", postgresql, timeout=TIMEOUT)
    registry.add("redis", redis.ping, timeout=TIMEOUT)

    first = await registry.run()
    returned = time.monotonic()
    assert first.age is not None and first.ready
    waves: list[list[HealthReport]] = []
    for _ in range(3):
        await asyncio.sleep(0.01)
        asked = time.monotonic()
        waves.append(await asyncio.gather(*(registry.run() for _ in range(FLOOD // 3))))
        for report in waves[-1]:
            assert report.checks == first.checks
            # Older than the time since the first report came back, at the least.
            assert report.age is not None and report.age >= asked - returned
            body = report.to_dict()
            assert set(body) == {"status", "checks", "age_ms"}
            assert body["age_ms"] == round(report.age * 1000, 2) > 0
            assert body["checks"] == first.to_dict()["checks"]
    assert postgresql.calls == 1
    assert statements == ["SELECT 1"]
    ages = [wave[0].age or 0.0 for wave in waves]
    assert ages == sorted(ages)

    # A check added since is never missing from a reused report: the next call runs them all.
    extra = Counted(redis.ping)
    registry.add("redis-again", extra, timeout=TIMEOUT)
    report = await registry.run()
    assert set(statuses(report)) == {"postgresql", "redis", "redis-again"}
    assert (postgresql.calls, extra.calls) == (2, 1)
    assert statements == ["SELECT 1"] * 2


async def test_a_new_run_starts_once_cache_for_has_passed(
    db: DatabaseManager, statements: list[str]
) -> None:
    cache_for = 1.0
    registry = HealthRegistry(cache_for=cache_for)
    postgresql = Counted(db.ping)
    registry.add("postgresql", postgresql, timeout=TIMEOUT)

    first = await registry.run()
    assert first.age is not None
    finished = time.monotonic() - first.age
    again = await registry.run()
    assert postgresql.calls == 1
    assert again.checks == first.checks

    await asyncio.sleep(finished + cache_for - time.monotonic() + 0.01)
    fresh = await registry.run()
    assert postgresql.calls == 2
    assert statements == ["SELECT 1"] * 2
    assert fresh.ready and fresh.age is not None and fresh.age < cache_for


async def test_a_cancelled_caller_does_not_cancel_the_run_the_others_wait_for(
    db: DatabaseManager, redis: RedisManager, statements: list[str]
) -> None:
    registry = HealthRegistry(cache_for=0)
    started, release = asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []

    async def gated_ping() -> float:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append("postgresql")
            raise
        return await db.ping()

    postgresql = Counted(gated_ping)
    registry.add("postgresql", postgresql, timeout=TIMEOUT * 10)
    registry.add("redis", redis.ping, timeout=TIMEOUT)
    with anyio.fail_after(TIMEOUT):
        # The first caller starts the run; it is the one that gives up.
        callers = [asyncio.create_task(registry.run()) for _ in range(5)]
        await started.wait()
        callers[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await callers[0]
        release.set()
        reports = await asyncio.gather(*callers[1:])

    assert cancelled == []
    assert all(statuses(r) == {"postgresql": "ok", "redis": "ok"} for r in reports)
    assert postgresql.calls == 1
    assert statements == ["SELECT 1"]


async def test_a_run_every_caller_left_still_ends_at_its_check_timeout(
    db: DatabaseManager, statements: list[str]
) -> None:
    stuck_timeout = 0.2
    registry = HealthRegistry(cache_for=60)
    started, cut_off = asyncio.Event(), asyncio.Event()

    async def hang() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cut_off.set()

    stuck, postgresql = Counted(hang), Counted(db.ping)
    registry.add("stuck", stuck, timeout=stuck_timeout)
    registry.add("postgresql", postgresql, timeout=TIMEOUT)
    others = asyncio.all_tasks()
    callers = [asyncio.create_task(registry.run()) for _ in range(3)]
    with anyio.fail_after(TIMEOUT):
        await started.wait()
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    assert all(c.cancelled() for c in callers)

    # The abandoned run is cut off by the check's own timeout, then no task of it is left.
    with anyio.fail_after(TIMEOUT):
        await cut_off.wait()
        leftover = asyncio.all_tasks() - others
        if leftover:
            await asyncio.wait(leftover)
    assert asyncio.all_tasks() <= others

    # Its report was kept: the next caller gets it instead of waiting for another timeout.
    report = await registry.run()
    assert (stuck.calls, postgresql.calls) == (1, 1)
    assert statements == ["SELECT 1"]
    assert statuses(report) == {"stuck": "timeout", "postgresql": "ok"}
    assert not report.ready
    stuck_result = next(c for c in report.checks if c.name == "stuck")
    assert stuck_result.latency_ms >= stuck_timeout * 1000 * 0.9


async def test_an_exception_in_a_check_is_that_check_down_for_every_caller(
    db: DatabaseManager, statements: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dualcore.health")

    async def broken() -> None:
        raise RuntimeError("cache node unreachable")

    registry = HealthRegistry(cache_for=0)
    failing, postgresql = Counted(broken), Counted(db.ping)
    registry.add("postgresql", postgresql, timeout=TIMEOUT)
    registry.add("search", failing, timeout=TIMEOUT)

    reports = await asyncio.gather(*(registry.run() for _ in range(50)))

    assert all(statuses(r) == {"postgresql": "ok", "search": "fail"} for r in reports)
    assert all(r.status_code == 503 for r in reports)
    assert (failing.calls, postgresql.calls) == (1, 1)
    assert statements == ["SELECT 1"]
    logged = [r.getMessage() for r in caplog.records if r.name == "dualcore.health"]
    assert logged == ["health check search failed: RuntimeError"]
    assert "unreachable" not in caplog.text


async def test_a_run_in_progress_on_another_event_loop_is_not_joined(
    db: DatabaseManager, statements: list[str]
) -> None:
    # One registry, two loops at once: a test client's thread and the server's loop, say.
    here = threading.current_thread()
    elsewhere_started, release = threading.Event(), threading.Event()

    async def probe() -> None:
        if threading.current_thread() is here:
            await db.ping()
            return
        elsewhere_started.set()
        while not release.is_set():  # noqa: ASYNC110 - a thread's event, not this loop's
            await asyncio.sleep(0.005)

    registry = HealthRegistry(cache_for=0)
    counted = Counted(probe)
    registry.add("postgresql", counted, timeout=TIMEOUT * 10)

    def other_loop() -> HealthReport:
        return asyncio.run(registry.run())

    with anyio.fail_after(TIMEOUT * 10):
        elsewhere = asyncio.ensure_future(asyncio.to_thread(other_loop))
        try:
            assert await asyncio.to_thread(elsewhere_started.wait, TIMEOUT)
            reports = await asyncio.gather(*(registry.run() for _ in range(20)))
        finally:
            release.set()
        other = await elsewhere

    assert counted.calls == 2
    assert statements == ["SELECT 1"]
    assert all(r.ready for r in [*reports, other])
