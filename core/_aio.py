"""Small asyncio helpers for cleanup that must finish even when the caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def finish_shielded(aw: Awaitable[T]) -> T:
    """Await `aw` to completion even if the current task is cancelled meanwhile.

    A cancellation that arrives while waiting is re-raised once the work is done, so cleanup
    (returning a connection to its pool) is never cut in half. Callers bound `aw` with a timeout.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                # The shielded work itself was cancelled, not the waiter.
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
