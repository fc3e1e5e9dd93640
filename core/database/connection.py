"""asyncpg connection hygiene for the pools: cancellation-safe connects, no handing out of
connections the server already closed, and errors marked as the database's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.resilience.errors import mark_origin

__all__ = ["DATABASE", "harden_engine", "shielded_connect"]

DATABASE = "database"


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
    except Exception as exc:
        # SQLAlchemy passes connect errors through unwrapped (an OSError for a refused
        # connection): the mark is what tells them from the application's own OSErrors.
        mark_origin(exc, DATABASE)
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


def _mark_error(context: ExceptionContext) -> None:
    mark_origin(context.original_exception, DATABASE)
    if context.sqlalchemy_exception is not None:
        mark_origin(context.sqlalchemy_exception, DATABASE)


def harden_engine(engine: AsyncEngine) -> AsyncEngine:
    """Make `engine`'s pool replace, at checkout, a connection the server closed while it sat
    idle (restart, `pg_terminate_backend`, idle timeouts), and mark every error its execute,
    commit or rollback raises as the database's.

    asyncpg notices a close as it happens, so the checkout check costs no round trip, unlike
    `pool_pre_ping`."""
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    event.listen(engine.sync_engine, "handle_error", _mark_error)
    return engine
