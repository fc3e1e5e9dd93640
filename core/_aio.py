"""Small asyncio helpers: deadlines, and cleanup that must finish even when the caller is
cancelled."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

import anyio

T = TypeVar("T")

if sys.version_info >= (3, 11):
    # A plain context manager on the current task: no extra task per use, unlike
    # `asyncio.wait_for` before 3.12, and about a fifth of the cost of an anyio cancel scope.
    from asyncio import timeout as deadline
else:  # pragma: no cover - exercised by the 3.10 CI session
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from anyio import fail_after

    @asynccontextmanager
    async def deadline(seconds: float) -> AsyncIterator[None]:
        """Raise `TimeoutError` if the block takes longer than `seconds`."""
        with fail_after(seconds):
            yield


if sys.version_info >= (3, 11):
    from asyncio import current_task, get_running_loop

    _PENDING, _DONE, _EXPIRING, _EXPIRED = 0, 1, 2, 3
    # The event loop runs a timer this much early; an expiry check must allow for it.
    _RESOLUTION = time.get_clock_info("monotonic").resolution

    class SharedTimeout:
        """`asyncio.timeout(seconds)` for many awaits of the same length, on one loop timer.

        `asyncio.timeout` arms a timer per use and leaves it cancelled in the loop's heap: on a
        path as short as a cache hit that is a tenth of the whole cost. Bounds of one length
        expire in the order they start, so one timer, for the oldest still running, serves
        them all. `with bound():` inside a task; raises `TimeoutError` as `asyncio.timeout`
        does, and an outer cancellation is never mistaken for the timeout.
        """

        __slots__ = ("_loop", "_running", "_seconds", "_timer")

        def __init__(self, seconds: float) -> None:
            self._seconds = seconds
            self._running: deque[_Bound] = deque()
            self._timer: asyncio.TimerHandle | None = None
            self._loop: asyncio.AbstractEventLoop | None = None

        @property
        def seconds(self) -> float:
            """The length of every bound."""
            return self._seconds

        def __call__(self) -> _Bound:
            return _Bound(self)

        def _expire(self) -> None:
            loop = self._loop
            assert loop is not None
            self._timer = None
            running = self._running
            now = loop.time() + _RESOLUTION
            while running:
                bound = running[0]
                if bound.state == _PENDING:
                    if bound.when > now:
                        self._timer = loop.call_at(bound.when, self._expire)
                        return
                    bound.state = _EXPIRING
                    bound.task.cancel()
                running.popleft()

    class _Bound:
        # Entering and leaving are written out, without helper calls: a cache hit pays for
        # two of these (the cache's bound and the connection's read bound).
        __slots__ = ("_cancelling", "_owner", "state", "task", "when")

        def __init__(self, owner: SharedTimeout) -> None:
            self._owner = owner
            self.state = _PENDING

        def __enter__(self) -> None:
            loop = get_running_loop()
            task = current_task(loop)
            if task is None:
                raise RuntimeError("SharedTimeout must be used inside a task")
            self.task = task
            self._cancelling = task.cancelling()
            owner = self._owner
            if loop is not owner._loop:  # first use, or a new event loop: nothing carries over
                owner._loop = loop
                owner._running = deque()
                owner._timer = None
            self.when = when = loop.time() + owner._seconds
            owner._running.append(self)
            if owner._timer is None:
                owner._timer = loop.call_at(when, owner._expire)

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            if self.state == _EXPIRING:
                self.state = _EXPIRED
                # As asyncio.timeout: the timeout's own cancel, not one from outside.
                if self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                    raise TimeoutError from exc
                return
            self.state = _DONE
            # Finished bounds leave from the front at once, so the queue holds only what runs
            # (plus those finished out of order, until the timer passes them).
            running = self._owner._running
            while running and running[0].state != _PENDING:
                running.popleft()

else:  # pragma: no cover - exercised by the 3.10 CI session
    from contextlib import AbstractContextManager

    from anyio import CancelScope

    class SharedTimeout:
        """`asyncio.timeout(seconds)` for many awaits of the same length (on 3.10: anyio's)."""

        __slots__ = ("_seconds",)

        def __init__(self, seconds: float) -> None:
            self._seconds = seconds

        @property
        def seconds(self) -> float:
            """The length of every bound."""
            return self._seconds

        def __call__(self) -> AbstractContextManager[CancelScope]:
            return anyio.fail_after(self._seconds)


async def finish_shielded(aw: Awaitable[T]) -> T:
    """Await `aw` to completion even if the current task is cancelled meanwhile.

    A cancellation that arrives while waiting is re-raised once the work is done, so cleanup
    (returning a connection to its pool) is never cut in half. Callers bound `aw` with a timeout.
    """
    task = _start(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError as exc:
        if task.done():
            # The shielded work itself was cancelled, not the waiter.
            raise
        cancellation = exc
    # An anyio cancel scope (Litestar, Starlette's task groups, a test's deadline) delivers its
    # cancellation again at every turn of the event loop until the task leaves the scope: waiting
    # on without an anyio shield would spin a core for as long as the cleanup takes. Entered
    # only once cancelled, so the usual path pays nothing for it.
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await asyncio.shield(task)
                break
            except asyncio.CancelledError:  # a plain asyncio cancellation, delivered once
                if task.done():
                    raise
    # The first cancellation, with the message its canceller (an anyio scope) recognises.
    raise cancellation


def _start(aw: Awaitable[T]) -> asyncio.Future[T]:
    if sys.version_info >= (3, 12) and asyncio.iscoroutine(aw):
        # Eager: the work runs at once up to its first suspension, so cleanup that needs no
        # I/O (the usual case) is done without a trip through the event loop; from there on
        # it is an ordinary task, shielded like any other.
        return asyncio.Task(aw, loop=asyncio.get_running_loop(), eager_start=True)
    return asyncio.ensure_future(aw)
