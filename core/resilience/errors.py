"""Classify errors as transient (worth retrying, counted by breakers) or not.

A transient error says the dependency could not be reached or asked us to try again: a refused,
reset or lost connection, a timeout, a server starting or shutting down, a serialization failure
or deadlock. Anything else (constraint violations, bad SQL, business errors, cancellation) is
permanent: retrying it would only repeat it.

Drivers wrap each other's errors (SQLAlchemy's `DBAPIError.orig` holds the adapter's error,
whose `__cause__` is the asyncpg error), so the classifier walks `orig` and `__cause__` links
until one link decides. A wrapper whose cause is transient is transient.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator

import anyio
import redis.exceptions as redis_exc
from asyncpg.exceptions import InterfaceError as PgInterfaceError
from asyncpg.exceptions import InternalClientError as PgInternalClientError
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = [
    "DEADLOCK_DETECTED",
    "SERIALIZATION_FAILURE",
    "TRANSIENT_SQLSTATES",
    "is_serialization_failure",
    "is_transient",
    "mark_origin",
    "origin_of",
    "sqlstate_of",
]

SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"

TRANSIENT_SQLSTATES = frozenset(
    {
        "08000",  # connection_exception
        "08001",  # sqlclient_unable_to_establish_sqlconnection
        "08003",  # connection_does_not_exist (also asyncpg's "closed in the middle of operation")
        "08004",  # sqlserver_rejected_establishment_of_sqlconnection
        "08006",  # connection_failure
        SERIALIZATION_FAILURE,
        DEADLOCK_DETECTED,
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown (server stopping, pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (server starting or in recovery)
        "57P05",  # idle_session_timeout
    }
)
"""SQLSTATEs worth a retry. 08007 (transaction resolution unknown) is deliberately absent: the
commit may have happened."""

# OSError subclasses that signal a configuration mistake rather than an unreachable peer.
_PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ssl.SSLCertVerificationError,
)

_TRANSIENT_REDIS: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,  # includes BusyLoadingError
    redis_exc.TimeoutError,
    redis_exc.TryAgainError,
    redis_exc.ClusterDownError,  # includes MasterDownError
    redis_exc.ReadOnlyError,  # writing to a replica during failover
)
# Connection errors that retrying cannot fix. MaxConnectionsError (pool exhausted: retrying only
# lengthens the wait) and ExternalAuthProviderError are missing from older redis-py releases.
_PERMANENT_REDIS: tuple[type[BaseException], ...] = tuple(
    cls
    for cls in (
        redis_exc.AuthenticationError,
        redis_exc.AuthorizationError,
        getattr(redis_exc, "ExternalAuthProviderError", None),
        getattr(redis_exc, "MaxConnectionsError", None),
    )
    if isinstance(cls, type)
)

_BROKEN_PROTOCOL = ("another operation (2) is in progress", '"failed" state', "not connected")

_MAX_CHAIN = 16


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then the errors it wraps (`orig`, then `__cause__`), without repeats."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < _MAX_CHAIN:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            pending.append(orig)
        if current.__cause__ is not None:
            pending.append(current.__cause__)


def _sqlstate(exc: BaseException) -> str | None:
    # asyncpg and SQLAlchemy's asyncpg adapter use `sqlstate`; psycopg uses `pgcode`.
    for attr in ("sqlstate", "pgcode"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and len(value) == 5:
            return value
    return None


def sqlstate_of(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE carried by `exc` or an error it wraps, if any."""
    for link in _chain(exc):
        state = _sqlstate(link)
        if state is not None:
            return state
    return None


def is_closed_transport_error(exc: BaseException) -> bool:
    """True for the `AttributeError` CPython 3.12.1 and 3.13.0 raise from `writelines()` on a
    transport whose peer has closed (`None._add_writer`); other releases raise a connection
    error there. redis-py passes it through unchanged."""
    return (
        isinstance(exc, AttributeError)
        and exc.name == "_add_writer"
        and getattr(exc, "obj", False) is None
    )


def _verdict(exc: BaseException) -> bool | None:
    """True/False when this one error decides the question, None to look at what it wraps."""
    if not isinstance(exc, Exception):
        return False  # cancellation, KeyboardInterrupt, SystemExit
    if is_closed_transport_error(exc):
        return True
    state = _sqlstate(exc)
    if state is not None:
        return state in TRANSIENT_SQLSTATES
    if isinstance(exc, DBAPIError):
        return True if exc.connection_invalidated else None
    if isinstance(exc, DisconnectionError):
        return True
    if isinstance(exc, PoolTimeoutError):
        return False  # pool exhausted: the caller's wait bound already elapsed
    if isinstance(exc, _PERMANENT_REDIS):
        return False
    if isinstance(exc, _TRANSIENT_REDIS):
        return True
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    # OSError covers refused/reset/aborted connections, unreachable hosts, names that do not
    # resolve yet, and a unix socket file that appears only once the server runs.
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError)):
        return True
    if isinstance(exc, anyio.BrokenResourceError):
        return True
    if isinstance(exc, PgInterfaceError):
        # A connection closed under us; other InterfaceErrors ("another operation is in
        # progress", "pool is closed") are programming errors.
        return "connection is closed" in str(exc)
    if isinstance(exc, PgInternalClientError):
        # A server that hangs up on an idle connection (pg_terminate_backend, restart) can leave
        # asyncpg's protocol draining the error (state 2) or failed; the connection is gone.
        return any(sign in str(exc) for sign in _BROKEN_PROTOCOL)
    return None


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or an error it wraps) is worth retrying: the dependency was unreachable,
    lost the connection, timed out, is starting/stopping, or reported a serialization failure
    or deadlock. Cancellation and every other error are not transient."""
    for link in _chain(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return False


def is_serialization_failure(exc: BaseException) -> bool:
    """True for a serialization failure (40001) or deadlock (40P01), wrapped or not: the whole
    transaction may be re-run from its start."""
    if not isinstance(exc, Exception):
        return False
    return sqlstate_of(exc) in (SERIALIZATION_FAILURE, DEADLOCK_DETECTED)


_ORIGIN = "__dualcore_origin__"


def mark_origin(exc: BaseException, dependency: str) -> None:
    """Record that `exc` was raised by `dependency`'s own client (its connect, execute or
    commit), so breakers and the HTTP error mapping can tell it from the same exception type
    raised by application code (an app's `FileNotFoundError` is not the database's)."""
    # An exception type with __slots__ and no __dict__ cannot carry the mark.
    with contextlib.suppress(AttributeError):
        setattr(exc, _ORIGIN, dependency)


def origin_of(exc: BaseException) -> str | None:
    """The dependency that raised `exc` or an error it wraps, as marked by `mark_origin`."""
    for link in _chain(exc):
        origin = getattr(link, _ORIGIN, None)
        if origin is not None:
            return str(origin)
    return None
