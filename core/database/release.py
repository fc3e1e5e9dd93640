"""Returning sessions and connections to their pool: finished even if the caller is cancelled,
bounded in time, and without a task of its own when there is nothing to wait for.

SQLAlchemy's async `close()` runs the synchronous close in a greenlet and awaits whatever I/O
that asks for. Most closes ask for none (an autocommit read's connection goes back to the pool
with nothing to roll back): those finish here, in the caller, with no suspension at which a
cancellation could cut them. The first time a close needs I/O (a ROLLBACK, closing an overflow
connection), the rest of it moves to a shielded task under a deadline. The awaitable it asked
for has not started yet, so that deadline, and any the I/O enters, binds to the cleanup's task,
never to the caller's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from greenlet import getcurrent, greenlet  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core._aio import deadline, finish_shielded

__all__ = ["CLEANUP_TIMEOUT", "release_connection", "release_session"]

log = logging.getLogger("dualcore.database")

CLEANUP_TIMEOUT = 5.0
"""Seconds a close may take before its connection is thrown away instead of returned."""

OnFailure = Callable[[Exception], Awaitable[None]]


class _CloseGreenlet(greenlet):  # type: ignore[misc]
    # SQLAlchemy's `await_()` accepts I/O requests from any greenlet carrying this marker.
    __sqlalchemy_greenlet_provider__ = True

    def __init__(self, fn: Callable[[], object], parent: Any) -> None:
        super().__init__(fn, parent)
        # The close sees the caller's context variables, as under `greenlet_spawn`.
        self.gr_context = parent.gr_context


async def _close(close: Callable[[], object], on_failure: OnFailure) -> None:
    """Run the synchronous `close` as `greenlet_spawn(close)` would, in the caller up to its
    first I/O and, from there on, shielded and bounded; `on_failure` gets any error."""
    runner = _CloseGreenlet(close, getcurrent())
    try:
        awaitable = runner.switch()
    except Exception as exc:
        await finish_shielded(on_failure(exc))
        return
    if runner.dead:
        return  # closed with no I/O: the usual case
    await finish_shielded(_finish(runner, awaitable, on_failure))


async def _finish(runner: Any, awaitable: Awaitable[Any], on_failure: OnFailure) -> None:
    try:
        async with deadline(CLEANUP_TIMEOUT):
            # `greenlet_spawn`'s loop: await each request, hand back its result or its error.
            while not runner.dead:
                try:
                    value = await awaitable
                except BaseException:
                    awaitable = runner.throw(*sys.exc_info())
                else:
                    awaitable = runner.switch(value)
    except Exception as exc:
        await on_failure(exc)


async def release_connection(conn: AsyncConnection) -> None:
    """Return `conn` to its pool; if that fails or cannot finish in time, throw it away."""

    async def invalidate(exc: Exception) -> None:
        log.warning("connection close failed (%s); invalidating it", type(exc).__name__)
        try:
            await conn.invalidate()
        except Exception:
            log.exception("invalidating a connection failed")

    sync = conn.sync_connection
    if sync is not None:  # None: never connected, nothing to give back
        await _close(sync.close, invalidate)


async def release_session(session: AsyncSession, conn: AsyncConnection | None = None) -> None:
    """Close `session`, rolling back anything uncommitted; if that fails or cannot finish in
    time, throw its connection away so that it never goes back to the pool mid-transaction.
    `conn` is the connection the session was bound to, if it was given one; it is closed too."""

    async def invalidate(exc: Exception) -> None:
        log.warning("session close failed (%s); invalidating its connection", type(exc).__name__)
        try:
            await session.invalidate()
            if conn is not None:
                await conn.invalidate()
        except Exception:
            log.exception("invalidating a session's connection failed")

    await _close(session.sync_session.close, invalidate)
    sync = conn.sync_connection if conn is not None else None
    if sync is not None and not sync.closed:

        async def report(exc: Exception) -> None:
            log.error("closing a replica connection failed", exc_info=exc)

        await _close(sync.close, report)
