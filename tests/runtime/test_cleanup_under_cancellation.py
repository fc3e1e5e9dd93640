"""Cleanup that must finish when its caller is cancelled (a shutdown, a session's release)
finishes, and does not burn the CPU while it waits.

An anyio cancel scope (Litestar, Starlette's task groups, `anyio.move_on_after`) delivers its
cancellation again at every turn of the event loop until the task leaves the scope. A wait that
keeps catching it turns into a busy loop for as long as the cleanup takes; these tests count the
event loop's callbacks, which does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from core.config import Settings
from core.runtime import Core

pytestmark = pytest.mark.anyio

CLOSE_TAKES = 0.5
"""A cleanup slow enough that a busy wait would schedule thousands of callbacks meanwhile."""

AT_MOST_CALLBACKS = 200
"""A waiting task and a sleeping cleanup need a handful; a spinning wait needs thousands."""


class SlowToClose:
    """A resource whose close takes `CLOSE_TAKES` seconds and cannot be cut short."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    @property
    def safe_url(self) -> str:
        return f"fake://{self.name}"

    async def start(self) -> None:
        pass

    async def ping(self) -> float:
        return 0.0

    async def close(self) -> None:
        await asyncio.sleep(CLOSE_TAKES)
        self.closed = True


@contextmanager
def counting_callbacks() -> Iterator[list[int]]:
    """Count what is scheduled with `call_soon` on the running loop while the block runs."""
    loop = asyncio.get_running_loop()
    count = [0]
    original = loop.call_soon

    def call_soon(*args, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += 1
        return original(*args, **kwargs)

    loop.call_soon = call_soon  # type: ignore[method-assign]
    try:
        yield count
    finally:
        del loop.call_soon  # back to the class's method


async def test_a_shutdown_cancelled_by_an_anyio_scope_finishes_its_closes_without_spinning() -> (
    None
):
    settings = Settings(_env_file=None)
    db, redis = SlowToClose("db"), SlowToClose("redis")
    reached_after_exit = False
    with counting_callbacks() as callbacks, anyio.move_on_after(0.05) as scope:
        async with Core(settings, db=db, redis=redis):  # type: ignore[arg-type]
            await anyio.sleep_forever()
        reached_after_exit = True

    # The closes ran to the end although the scope had expired before the exit began.
    assert db.closed and redis.closed
    # The scope's cancellation went on after the cleanup, and the scope recognised it as its own.
    assert scope.cancelled_caught
    assert not reached_after_exit
    assert callbacks[0] < AT_MOST_CALLBACKS, callbacks[0]


async def test_a_plain_asyncio_cancellation_during_shutdown_also_waits_for_the_closes() -> None:
    settings = Settings(_env_file=None)
    db, redis = SlowToClose("db"), SlowToClose("redis")
    entered = asyncio.Event()

    async def run() -> None:
        async with Core(settings, db=db, redis=redis):  # type: ignore[arg-type]
            entered.set()
        # Not reached: the cancellation below arrives during the exit.
        raise AssertionError("the cancellation was swallowed")

    task = asyncio.ensure_future(run())
    await entered.wait()
    await asyncio.sleep(0)  # the task is now inside the exit, waiting for the first close
    with counting_callbacks() as callbacks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert db.closed and redis.closed
    assert callbacks[0] < AT_MOST_CALLBACKS, callbacks[0]
