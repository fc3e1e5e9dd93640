"""HTTP policy shared by the adapters: which errors become 503 or 409, and health bodies.

Adapters only translate these decisions into their framework's response objects, so both
frameworks answer the same status, headers and body for the same failure.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = [
    "LIVENESS_BODY",
    "ErrorResponse",
    "error_response_for",
    "handled_exception_types",
]

LIVENESS_BODY: dict[str, Any] = {"status": "ok"}

# Retry-After for a pool that is momentarily full versus a dependency that is down.
_RETRY_AFTER_BUSY = 1
_RETRY_AFTER_DOWN = 5


@dataclass(frozen=True)
class ErrorResponse:
    """A framework-neutral error answer."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _unavailable(dependency: str, retry_after: float) -> ErrorResponse:
    seconds = max(1, round(retry_after))
    return ErrorResponse(
        503,
        {"detail": "Service temporarily unavailable", "dependency": dependency},
        {"Retry-After": str(seconds)},
    )


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError))


def error_response_for(exc: BaseException) -> ErrorResponse | None:
    """The response for an error the core knows how to answer, or None to let the framework
    handle it.

    503 + Retry-After: database or Redis unreachable, a pool wait that timed out, an open
    circuit breaker, a dependency that failed start-up checks. 409: an integrity violation
    (including one raised by a deferred constraint at COMMIT).
    """
    from core.lifespan import DependencyUnavailable

    if isinstance(exc, PoolTimeoutError):
        return _unavailable("database", _RETRY_AFTER_BUSY)
    if isinstance(exc, IntegrityError):
        return ErrorResponse(409, {"detail": "Conflict with the current state of the resource"})
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or _is_connection_error(exc.orig or exc):
            return _unavailable("database", _RETRY_AFTER_DOWN)
        if _is_asyncpg_connection_error(exc.orig):
            return _unavailable("database", _RETRY_AFTER_DOWN)
        return None
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return _unavailable("redis", _RETRY_AFTER_DOWN)
    if isinstance(exc, DependencyUnavailable):
        return _unavailable(exc.dependency.lower(), _RETRY_AFTER_DOWN)
    breaker = _circuit_open(exc)
    if breaker is not None:
        return breaker
    if _is_asyncpg_connection_error(exc) or _is_connection_error(exc):
        return _unavailable("database", _RETRY_AFTER_DOWN)
    return None


def handled_exception_types() -> tuple[type[Exception], ...]:
    """The exception classes adapters register handlers for; `error_response_for` decides."""
    from core.lifespan import DependencyUnavailable

    types: list[type[Exception]] = [
        PoolTimeoutError,
        DBAPIError,
        RedisConnectionError,
        RedisTimeoutError,
        DependencyUnavailable,
        ConnectionError,
        TimeoutError,
        asyncio.TimeoutError,
    ]
    try:
        from core.resilience import CircuitOpenError

        types.append(CircuitOpenError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _is_asyncpg_connection_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return False
    # SQLAlchemy's adapter keeps the driver's exception on __cause__.
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if isinstance(
            seen,
            (
                asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.TooManyConnectionsError,
                asyncpg.exceptions.ConnectionFailureError,
            ),
        ):
            return True
        seen = seen.__cause__
    return False


def _circuit_open(exc: BaseException) -> ErrorResponse | None:
    try:
        from core.resilience import CircuitOpenError
    except ImportError:  # pragma: no cover - resilience is part of core
        return None
    if isinstance(exc, CircuitOpenError):
        name = getattr(exc, "name", "dependency")
        return _unavailable(str(name), float(getattr(exc, "retry_after", _RETRY_AFTER_DOWN)))
    return None
