"""The cache's per-call bound: `asyncio.timeout` semantics for many calls on one loop timer.

Each bound must expire at its own deadline however the calls overlap, never fire for a call
that already finished, and never turn a cancellation from outside into a timeout. Time is
read from the event loop's clock; every bound below is checked from below (not before its
deadline) and from above only loosely (a busy machine delays the loop, not the deadline).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import pytest

from core._aio import SharedTimeout

pytestmark = pytest.mark.anyio

BOUND = 0.05


async def _hang() -> None:
    """Outlive any bound under test; fail, rather than hang, if none fires."""
    await asyncio.sleep(BOUND * 40)
    raise AssertionError("no bound fired")


async def _waiting_in(bound: SharedTimeout) -> asyncio.Task[None]:
    """A task that has entered `bound` and waits inside it."""
    entered = asyncio.Event()

    async def call() -> None:
        with bound():
            entered.set()
            await _hang()

    task = asyncio.ensure_future(call())
    await entered.wait()
    return task


async def test_a_call_past_the_bound_raises_timeout_error_at_the_bound() -> None:
    bound = SharedTimeout(BOUND)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError), bound():
        await _hang()
    assert loop.time() - start >= BOUND


async def test_overlapping_calls_each_expire_at_their_own_deadline() -> None:
    bound = SharedTimeout(BOUND)
    loop = asyncio.get_running_loop()
    expired: dict[int, float] = {}
    started: dict[int, float] = {}

    async def call(n: int) -> str:
        started[n] = loop.time()
        try:
            with bound():
                if n % 2:
                    await asyncio.sleep(0)  # finishes long before its deadline
                    return "done"
                await _hang()
        except TimeoutError:
            expired[n] = loop.time()
            return "timeout"
        raise AssertionError("unreachable")

    tasks = []
    for n in range(8):
        tasks.append(asyncio.ensure_future(call(n)))
        await asyncio.sleep(BOUND / 4)  # staggered: the later ones start after earlier expire
    results = await asyncio.gather(*tasks)
    assert results == ["timeout", "done"] * 4
    for n, at in expired.items():
        assert at - started[n] >= BOUND
    assert sorted(expired, key=expired.__getitem__) == sorted(expired)  # in the order started


async def test_a_call_that_finished_is_never_cancelled_later() -> None:
    bound = SharedTimeout(BOUND)
    with bound():
        await asyncio.sleep(0)
    # Past the finished call's deadline, with another bound keeping the shared timer busy.
    with bound():
        await asyncio.sleep(BOUND * 0.5)
    try:
        await asyncio.sleep(BOUND * 2)
    except asyncio.CancelledError:
        pytest.fail("cancelled by a bound that had already finished")


async def test_an_outer_cancellation_stays_a_cancellation() -> None:
    task = await _waiting_in(SharedTimeout(BOUND * 20))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10's asyncio cannot tell the two apart (no Task.uncancel); anyio's bound there "
    "reports the timeout",
)
async def test_an_outer_cancellation_arriving_with_the_expiry_is_not_swallowed() -> None:
    # Due at once: its timer runs on the loop's next turn.
    task = await _waiting_in(SharedTimeout(0))
    # This wake-up was queued before the bound's timer came due, so on this same turn of the
    # loop the task is cancelled from here, then by its bound, and only then runs again.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_bounds_nest_with_asyncio_timeouts_either_way() -> None:
    inner = SharedTimeout(BOUND * 20)
    with pytest.raises(TimeoutError):  # noqa: PT012 - the nesting is what is under test
        async with _outer(BOUND):
            with inner():
                await _hang()
    # The bound shorter than the block around it: the bound's own TimeoutError, caught inside.
    short = SharedTimeout(BOUND)
    caught = False
    async with _outer(BOUND * 20):
        try:
            with short():
                await _hang()
        except TimeoutError:
            caught = True
        await asyncio.sleep(0)  # the outer block is not cancelled afterwards
    assert caught


def _outer(seconds: float) -> AbstractAsyncContextManager[object]:
    """`asyncio.timeout`, or anyio's on 3.10, which has none."""
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    return _fail_after(seconds)


@asynccontextmanager
async def _fail_after(seconds: float) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield


def test_a_bound_serves_one_event_loop_after_another() -> None:
    bound = SharedTimeout(BOUND)

    async def once() -> None:
        with bound():
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError), bound():
            await _hang()

    asyncio.run(once())
    asyncio.run(once())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 uses anyio's own fail_after")
async def test_one_timer_serves_many_sequential_calls() -> None:
    bound = SharedTimeout(BOUND)
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    for _ in range(1000):
        with bound():
            await asyncio.sleep(0)
    # asyncio.timeout would leave 1000 cancelled timers in the heap; the shared one arms one.
    assert len(loop._scheduled) - before <= 1  # type: ignore[attr-defined]
    assert len(bound._running) == 0  # type: ignore[attr-defined]
