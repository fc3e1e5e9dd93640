"""Small asyncio helpers for cleanup that must finish even when the caller is cancelled."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
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
