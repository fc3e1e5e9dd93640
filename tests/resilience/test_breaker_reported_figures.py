"""What a breaker reports about itself, to the figure: the rejection's message and wait, the
snapshot in every state, and the log line of a failing listener."""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from core.resilience import BreakerSnapshot, BreakerState, CircuitBreaker, CircuitOpenError

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

pytestmark = pytest.mark.anyio


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def _open(clock: Clock, threshold: int = 2) -> CircuitBreaker:
    breaker = CircuitBreaker("db", failure_threshold=threshold, reset_timeout=10.0, clock=clock)
    for _ in range(threshold):
        assert breaker.allow()
        breaker.record_failure(ConnectionResetError())
    assert breaker.state is OPEN
    return breaker


async def _rejection(breaker: CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        async with breaker:
            pytest.fail("admitted by an open breaker")
    return info.value


async def test_the_rejection_names_the_breaker_and_the_exact_wait() -> None:
    clock = Clock()
    breaker = _open(clock)
    clock.now += 9.7
    rejected = await _rejection(breaker)
    assert str(rejected) == "circuit 'db' is open; retry after 0.30s"
    assert rejected.name == "db"
    assert rejected.retry_after == pytest.approx(0.3)
    assert breaker.snapshot().retry_after == pytest.approx(0.3)


def test_the_snapshot_through_a_whole_cycle() -> None:
    clock = Clock()
    breaker = _open(clock)
    assert breaker.snapshot() == BreakerSnapshot("db", OPEN, 2, 100.0, 10.0, 0)
    clock.now = 110.0
    # Half-open keeps the count and the time it opened: they say why it is probing.
    assert breaker.snapshot() == BreakerSnapshot("db", HALF_OPEN, 2, 100.0, 0.0, 0)
    assert breaker.allow()
    assert breaker.snapshot() == BreakerSnapshot("db", HALF_OPEN, 2, 100.0, 0.0, 1)
    breaker.record_success()
    assert breaker.snapshot() == BreakerSnapshot("db", CLOSED, 0, None, None, 0)
    assert breaker.snapshot().as_dict()["opened_at"] is None
    # Closed again, it takes the full threshold to open once more.
    assert breaker.allow()
    breaker.record_failure(ConnectionResetError())
    assert breaker.state is CLOSED


def test_a_failing_listener_is_logged_with_the_breakers_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics backend down")

    breaker = CircuitBreaker("db", 1, 10.0, clock=Clock(), listeners=[broken])
    with caplog.at_level(logging.ERROR, logger="core.resilience.breaker"):
        assert breaker.allow()
        breaker.record_failure(ConnectionResetError())
    assert caplog.messages == ["breaker 'db': state listener failed"]


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow()
        breaker.record_failure(ConnectionResetError())


def _in_own_context(test: Callable[[], None]) -> Callable[[], None]:
    """Run the test in an empty context: admitted calls are found in the task's own context,
    and tests run one after another in the same thread share theirs."""

    @functools.wraps(test)
    def run() -> None:
        contextvars.Context().run(test)

    return run


@_in_own_context
def test_a_call_admitted_before_the_breaker_opened_does_not_restart_its_timer() -> None:
    clock = Clock()
    breaker = CircuitBreaker("db", failure_threshold=2, reset_timeout=10.0, clock=clock)
    assert breaker.allow()  # a slow call, still running while others fail
    _trip(breaker)
    clock.now = 105.0
    breaker.record_failure(ConnectionResetError())
    assert breaker.snapshot() == BreakerSnapshot("db", OPEN, 2, 100.0, 5.0, 0)


@_in_own_context
def test_nested_calls_admitted_before_both_breakers_opened_are_each_ignored() -> None:
    clock = Clock()
    outer = CircuitBreaker("outer", failure_threshold=2, reset_timeout=10.0, clock=clock)
    inner = CircuitBreaker("inner", failure_threshold=2, reset_timeout=10.0, clock=clock)
    assert outer.allow()
    assert inner.allow()
    _trip(outer)
    _trip(inner)
    clock.now = 105.0
    # The outer call settles first, under the inner one still open on top of it.
    outer.record_failure(ConnectionResetError())
    inner.record_failure(ConnectionResetError())
    assert outer.snapshot() == BreakerSnapshot("outer", OPEN, 2, 100.0, 5.0, 0)
    assert inner.snapshot() == BreakerSnapshot("inner", OPEN, 2, 100.0, 5.0, 0)


def test_an_outcome_recorded_in_another_task_settles_the_outstanding_probe() -> None:
    clock = Clock()
    breaker = _open(clock)
    clock.now = 110.0
    # Admitted in one context, recorded in another (a detached fill, say): the record is
    # taken as the outstanding probe's, so its slot is freed.
    assert contextvars.copy_context().run(breaker.allow)
    assert breaker.snapshot().probes_in_flight == 1
    contextvars.Context().run(breaker.record_success)
    assert breaker.snapshot() == BreakerSnapshot("db", CLOSED, 0, None, None, 0)


def test_the_defaults_and_what_each_refusal_says() -> None:
    breaker = CircuitBreaker("db")
    assert (breaker.failure_threshold, breaker.reset_timeout, breaker.half_open_max_calls) == (
        5,
        10.0,
        1,
    )
    refusals = [
        ({"failure_threshold": 0}, "^failure_threshold must be at least 1$"),
        ({"reset_timeout": 0}, "^reset_timeout must be positive$"),
        ({"half_open_max_calls": 0}, "^half_open_max_calls must be at least 1$"),
    ]
    for bad, message in refusals:
        with pytest.raises(ValueError, match=message):
            CircuitBreaker("x", **bad)  # type: ignore[arg-type]
