"""asyncpg connection hygiene for the pools: cancellation-safe connects, and no handing out of
connections the server already closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["discard_closed_on_checkout", "shielded_connect"]


async def shielded_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, finished in the background if the caller is cancelled.

    Cancelling asyncpg mid-connect (a client that disconnects while its request waits for a new
    pooled connection) leaves an error on a future nobody awaits, reported as "Future exception
    was never retrieved", and can leave a half-open connection behind. Here the attempt runs to
    completion (bounded by its `timeout`) and a connection nobody wants any more is closed.
    """
    attempt = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(_discard_orphan)
        raise


def _discard_orphan(attempt: asyncio.Future[asyncpg.Connection]) -> None:
    if attempt.cancelled() or attempt.exception() is not None:
        return  # the error is retrieved here: the caller that wanted it is gone
    attempt.result().terminate()


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    driver = getattr(dbapi_connection, "driver_connection", None)
    is_closed = getattr(driver, "is_closed", None)
    if is_closed is not None and is_closed():
        # The pool replaces the connection and hands out a fresh one.
        raise DisconnectionError("pooled connection was closed by the server")


def discard_closed_on_checkout(engine: AsyncEngine) -> AsyncEngine:
    """Make `engine`'s pool replace, at checkout, a connection the server closed while it sat
    idle (restart, `pg_terminate_backend`, idle timeouts). asyncpg notices the close as it
    happens, so this costs no round trip, unlike `pool_pre_ping`."""
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine
