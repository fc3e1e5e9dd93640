"""Circuit breaker state machine, with a fake clock, and in front of a real Redis."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_exc
from anyio.abc import TaskStatus
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.config import ResilienceSettings
from core.resilience import (
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    is_transient,
)
from tests.support.faultproxy import FaultProxy

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    changes: list[tuple[str, BreakerState, BreakerState]] = field(default_factory=list)

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.changes.append((name, old, new))


def make(clock: Clock, **kwargs: Any) -> tuple[CircuitBreaker, Recorder]:
    recorder = Recorder()
    options: dict[str, Any] = {
        "failure_threshold": 3,
        "reset_timeout": 10.0,
        "half_open_max_calls": 1,
    }
    options.update(kwargs)
    breaker = CircuitBreaker("db", clock=clock, listeners=[recorder], **options)
    return breaker, recorder


async def fail(breaker: CircuitBreaker, exc: Exception | None = None) -> None:
    with pytest.raises(type(exc) if exc else ConnectionResetError):
        async with breaker:
            raise exc or ConnectionResetError("lost")


async def succeed(breaker: CircuitBreaker) -> str:
    return await breaker.call(_answer, "ok", suffix="!")


async def _answer(value: str, *, suffix: str = "") -> str:
    return value + suffix


async def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        await fail(breaker)
    assert breaker.state is OPEN


# --- closed -> open ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_consecutive_failures_open_the_breaker() -> None:
    clock = Clock()
    breaker, recorder = make(clock)
    await fail(breaker)
    await fail(breaker)
    assert await succeed(breaker) == "ok!"  # a success resets the count
    await fail(breaker)
    await fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 2
    await fail(breaker)
    assert breaker.state is OPEN
    assert recorder.changes == [("db", CLOSED, OPEN)]


@pytest.mark.anyio
async def test_open_breaker_rejects_without_calling() -> None:
    clock = Clock()
    breaker, _ = make(clock)
    await open_breaker(breaker)
    clock.now += 4
    calls: list[int] = []

    async def never() -> None:
        calls.append(1)

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(never)
    assert calls == []
    assert info.value.name == "db"
    assert info.value.retry_after == pytest.approx(6.0)
    assert not is_transient(info.value), "retrying a rejection only delays the caller"
    assert breaker.allow() is False


@pytest.mark.anyio
async def test_business_errors_do_not_count() -> None:
    breaker, recorder = make(Clock(), failure_threshold=1)
    for _ in range(5):
        await fail(breaker, KeyError("no such user"))
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 0
    assert recorder.changes == []


@pytest.mark.anyio
async def test_custom_failure_predicate() -> None:
    breaker, _ = make(Clock(), failure_threshold=1, is_failure=lambda e: isinstance(e, KeyError))
    await fail(breaker, ConnectionResetError())
    assert breaker.state is CLOSED
    await fail(breaker, KeyError())
    assert breaker.state is OPEN


@pytest.mark.anyio
async def test_cancellation_does_not_count() -> None:
    breaker, _ = make(Clock(), failure_threshold=1)
    for _ in range(3):
        with anyio.move_on_after(0.01) as scope:
            async with breaker:
                await anyio.sleep(5)
        assert scope.cancelled_caught
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 0


# --- open -> half-open -> closed / open ------------------------------------------------------


@pytest.mark.anyio
async def test_half_open_probe_success_closes() -> None:
    clock = Clock()
    breaker, recorder = make(clock)
    await open_breaker(breaker)
    clock.now += 10
    assert breaker.state is HALF_OPEN
    assert await succeed(breaker) == "ok!"
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 0
    assert recorder.changes == [
        ("db", CLOSED, OPEN),
        ("db", OPEN, HALF_OPEN),
        ("db", HALF_OPEN, CLOSED),
    ]


@pytest.mark.anyio
async def test_half_open_probe_failure_reopens_and_restarts_the_timer() -> None:
    clock = Clock()
    breaker, _ = make(clock)
    await open_breaker(breaker)
    clock.now += 12
    await fail(breaker)
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert snap.opened_at == clock.now
    assert snap.retry_after == pytest.approx(10.0)
    clock.now += 9.9
    assert breaker.state is OPEN
    clock.now += 0.1
    assert breaker.state is HALF_OPEN


@pytest.mark.anyio
async def test_half_open_admits_at_most_the_probe_limit() -> None:
    clock = Clock()
    breaker, _ = make(clock, half_open_max_calls=2)
    await open_breaker(breaker)
    clock.now += 10
    release = anyio.Event()
    admitted: list[int] = []

    async def probe() -> None:
        async with breaker:
            admitted.append(1)
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        tg.start_soon(probe)
        await anyio.wait_all_tasks_blocked()
        assert len(admitted) == 2
        with pytest.raises(CircuitOpenError) as info:
            await succeed(breaker)
        assert info.value.retry_after == 0.0
        assert breaker.snapshot().probes_in_flight == 2
        release.set()
    assert breaker.state is CLOSED
    assert breaker.snapshot().probes_in_flight == 0


@pytest.mark.anyio
async def test_cancelled_probe_releases_its_slot() -> None:
    clock = Clock()
    breaker, _ = make(clock)
    await open_breaker(breaker)
    clock.now += 10
    with anyio.move_on_after(0.01) as scope:
        async with breaker:
            await anyio.sleep(5)
    assert scope.cancelled_caught
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().probes_in_flight == 0
    assert await succeed(breaker) == "ok!"
    assert breaker.state is CLOSED


@pytest.mark.anyio
async def test_asyncio_cancelled_probe_releases_its_slot() -> None:
    clock = Clock()
    breaker, _ = make(clock)
    await open_breaker(breaker)
    clock.now += 10
    task = asyncio.ensure_future(breaker.call(asyncio.sleep, 5))
    await anyio.wait_all_tasks_blocked()
    assert breaker.snapshot().probes_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.snapshot().probes_in_flight == 0
    assert breaker.state is HALF_OPEN


@pytest.mark.anyio
async def test_business_error_in_a_probe_releases_its_slot() -> None:
    clock = Clock()
    breaker, _ = make(clock)
    await open_breaker(breaker)
    clock.now += 10
    await fail(breaker, ValueError("invalid"))
    assert breaker.state is HALF_OPEN
    assert breaker.allow() is True
    breaker.record_success()
    assert breaker.state is CLOSED


@pytest.mark.anyio
async def test_outcome_of_a_call_from_an_earlier_phase_is_ignored() -> None:
    clock = Clock()
    breaker, _ = make(clock, failure_threshold=1)
    slow_may_finish = anyio.Event()

    async def slow() -> None:
        async with breaker:
            await slow_may_finish.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow)
        await anyio.wait_all_tasks_blocked()
        await fail(breaker)  # opens while `slow` is still running
        slow_may_finish.set()
    assert breaker.state is OPEN, "a success admitted before the failure must not close it"


@pytest.mark.anyio
async def test_probe_from_an_earlier_half_open_phase_still_holds_its_slot() -> None:
    clock = Clock()
    breaker, _ = make(clock, half_open_max_calls=2)
    await open_breaker(breaker)
    clock.now += 10
    release = anyio.Event()

    async def slow_probe() -> None:
        async with breaker:
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_probe)
        await anyio.wait_all_tasks_blocked()
        await fail(breaker)  # the second probe fails: open again, the slow one still runs
        assert breaker.state is OPEN
        clock.now += 10
        assert breaker.allow()  # one new probe; the slow one holds the other slot
        assert not breaker.allow()
        assert breaker.snapshot().probes_in_flight == 2
        release.set()
    assert breaker.state is HALF_OPEN, "the stale probe's success says nothing about now"
    assert breaker.snapshot().probes_in_flight == 1
    breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.snapshot().probes_in_flight == 0


# --- low-level API, snapshot, listeners ------------------------------------------------------


def test_low_level_api_for_a_cache_layer() -> None:
    clock = Clock()
    breaker, _ = make(clock, failure_threshold=2)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(redis_exc.ConnectionError("down"))
    assert not breaker.allow()
    clock.now += 10
    assert breaker.allow()  # the probe
    assert not breaker.allow()
    breaker.record_failure(asyncio.CancelledError())  # cancelled probe: slot freed, no verdict
    assert breaker.state is HALF_OPEN
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED


def test_permits_in_the_callers_hands() -> None:
    clock = Clock()
    breaker, recorder = make(clock, failure_threshold=2, half_open_max_calls=2)
    held = [breaker.admit(), breaker.admit()]
    assert all(p is not None and not p.probe for p in held)
    first = held[0]
    assert first is not None
    breaker.settle(first, redis_exc.ConnectionError("down"))
    breaker.settle(first, redis_exc.ConnectionError("down"))  # again: not a second failure
    assert breaker.state is CLOSED
    second = held[1]
    assert second is not None
    breaker.settle(second, redis_exc.ConnectionError("down"))
    assert breaker.state is OPEN
    assert breaker.admit() is None
    clock.now += 10
    probes = [breaker.admit(), breaker.admit()]
    assert breaker.admit() is None  # the probe limit
    assert all(p is not None and p.probe for p in probes)
    cancelled, good = probes
    assert cancelled is not None and good is not None
    breaker.settle(cancelled, asyncio.CancelledError())  # no verdict, the slot freed
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().probes_in_flight == 1
    breaker.settle(good)
    assert breaker.state is CLOSED
    assert [(old, new) for _, old, new in recorder.changes] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_a_permit_from_an_earlier_phase_settles_without_a_verdict() -> None:
    clock = Clock()
    breaker, _ = make(clock, failure_threshold=1)
    slow = breaker.admit()
    failing = breaker.admit()
    assert slow is not None and failing is not None
    breaker.settle(failing, ConnectionResetError())
    assert breaker.state is OPEN
    breaker.settle(slow)  # admitted while closed: says nothing about the open phase
    assert breaker.state is OPEN


def test_nested_breakers_settle_their_own_calls() -> None:
    clock = Clock()
    outer, _ = make(clock, failure_threshold=1)
    inner = CircuitBreaker("cache", 1, 10.0, clock=clock)
    assert outer.allow()
    assert inner.allow()
    outer.record_failure(ConnectionResetError())
    inner.record_success()
    assert outer.state is OPEN
    assert inner.state is CLOSED


def test_snapshot_reports_state_for_health() -> None:
    clock = Clock()
    breaker, _ = make(clock, failure_threshold=1)
    assert breaker.snapshot() == BreakerSnapshot("db", CLOSED, 0, None, None, 0)
    assert breaker.allow()
    breaker.record_failure(TimeoutError())
    clock.now += 3
    snap = breaker.snapshot()
    assert snap.as_dict() == {
        "name": "db",
        "state": "open",
        "consecutive_failures": 1,
        "opened_at": 100.0,
        "retry_after": 7.0,
        "probes_in_flight": 0,
    }
    assert repr(breaker) == "<CircuitBreaker 'db' open>"


def test_failing_listener_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[BreakerState] = []

    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics backend down")

    breaker = CircuitBreaker("db", 1, 10.0, clock=Clock(), listeners=[broken])
    breaker.listeners.append(lambda _n, _o, new: seen.append(new))
    with caplog.at_level(logging.ERROR, logger="core.resilience.breaker"):
        assert breaker.allow()
        breaker.record_failure(ConnectionResetError())
    assert breaker.state is OPEN
    assert seen == [OPEN]
    assert "state listener failed" in caplog.text


def test_from_settings_and_validation() -> None:
    cfg = ResilienceSettings(
        breaker_failure_threshold=4, breaker_reset_timeout=2.5, breaker_half_open_max_calls=3
    )
    breaker = CircuitBreaker.from_settings("redis", cfg)
    assert (breaker.name, breaker.failure_threshold, breaker.reset_timeout) == ("redis", 4, 2.5)
    assert breaker.half_open_max_calls == 3
    for bad in ({"failure_threshold": 0}, {"reset_timeout": 0}, {"half_open_max_calls": 0}):
        with pytest.raises(ValueError, match="must be"):
            CircuitBreaker("x", **bad)


# --- a real dependency ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_breaker_in_front_of_real_redis(redis_proxy: FaultProxy, redis_url: str) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout=0.2)
    client = aioredis.Redis.from_url(
        redis_proxy.url_for(redis_url), socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        with anyio.fail_after(10):
            assert await breaker.call(client.ping) is True
            redis_proxy.cut()
            for _ in range(2):
                with pytest.raises(redis_exc.ConnectionError):
                    await breaker.call(client.ping)
            assert breaker.state is OPEN
            with pytest.raises(CircuitOpenError):
                await breaker.call(client.ping)
            redis_proxy.restore()
            await anyio.sleep(0.25)
            assert breaker.state is HALF_OPEN
            assert await breaker.call(client.ping) is True
            assert breaker.state is CLOSED
    finally:
        await client.aclose()


# --- any interleaving ------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    probe: bool
    outcome: str = "ok"
    go: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None


async def _run_call(breaker: CircuitBreaker, call: Call, *, task_status: TaskStatus[bool]) -> None:
    try:
        with anyio.CancelScope() as scope:
            call.scope = scope
            try:
                async with breaker:
                    task_status.started(True)
                    await call.go.wait()
                    if call.outcome == "fail":
                        raise ConnectionResetError("lost")
                    if call.outcome == "business":
                        raise LookupError("not found")
                    if call.outcome == "cancel":
                        scope.cancel()
                        await anyio.sleep_forever()
            except CircuitOpenError:
                task_status.started(False)
            except (ConnectionResetError, LookupError):
                pass
    finally:
        call.done.set()


# Weighted so that runs often open the breaker, wait out the timeout and pile up probes.
_KINDS = ["start"] * 4 + ["fail"] * 2 + ["ok", "business", "cancel", "tick", "tick"]
_TICKS = [0, 1, 4, 10]
_ops = st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 20)), max_size=60)


@given(ops=_ops, max_calls=st.integers(1, 3), threshold=st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_probe_limit_holds_for_any_interleaving(
    ops: list[tuple[str, int]], max_calls: int, threshold: int
) -> None:
    async def scenario() -> None:
        clock = Clock()
        breaker = CircuitBreaker("p", threshold, 5.0, max_calls, clock=clock)
        running: list[Call] = []
        async with anyio.create_task_group() as tg:
            for kind, arg in ops:
                if kind == "tick":
                    clock.now += _TICKS[arg % len(_TICKS)]
                elif kind == "start":
                    state = breaker.state
                    live_probes = sum(c.probe for c in running)
                    expected = state is CLOSED or (state is HALF_OPEN and live_probes < max_calls)
                    call = Call(probe=state is HALF_OPEN)
                    admitted = await tg.start(_run_call, breaker, call)
                    assert admitted == expected, (state, live_probes)
                    if admitted:
                        running.append(call)
                elif running:
                    call = running.pop(arg % len(running))
                    call.outcome = kind
                    call.go.set()
                    await call.done.wait()
                live_probes = sum(c.probe for c in running)
                assert live_probes <= max_calls
                assert breaker.snapshot().probes_in_flight == live_probes
            for call in running:
                call.outcome = "cancel"
                call.go.set()
        assert breaker.snapshot().probes_in_flight == 0

    anyio.run(scenario)
