"""HTTP policy shared by the adapters: which errors become 503 or 409, and health bodies.

Adapters only translate these decisions into their framework's response objects, so both
frameworks answer the same status, headers and body for the same failure.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.errors import ResourceClosedError
from core.resilience import CircuitOpenError, is_serialization_failure, is_transient

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


_CONFLICT = ErrorResponse(409, {"detail": "Conflict with the current state of the resource"})


def _dependency_of(exc: BaseException) -> str:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (RedisError, RedisClusterException)):
            return "redis"
        seen = seen.__cause__ or seen.__context__
    return "database"


def error_response_for(exc: BaseException) -> ErrorResponse | None:
    """The response for an error the core knows how to answer, or None to let the framework
    handle it.

    503 + Retry-After: database or Redis unreachable (any transient connection-level error, as
    `core.resilience.is_transient` classifies it), a pool wait that timed out, an open circuit
    breaker, a dependency that failed its start-up checks. 409: an integrity violation
    (including a deferred constraint failing at COMMIT) or a serialization failure/deadlock
    that outlived its retries.
    """
    from core.lifespan import DependencyUnavailable

    if isinstance(exc, PoolTimeoutError):
        return _unavailable("database", _RETRY_AFTER_BUSY)
    if isinstance(exc, IntegrityError) or is_serialization_failure(exc):
        return _CONFLICT
    if isinstance(exc, CircuitOpenError):
        return _unavailable(exc.name, exc.retry_after or _RETRY_AFTER_BUSY)
    if isinstance(exc, ResourceClosedError):
        return _unavailable(exc.dependency, _RETRY_AFTER_DOWN)
    if isinstance(exc, DependencyUnavailable):
        return _unavailable(exc.dependency.lower(), _RETRY_AFTER_DOWN)
    if is_transient(exc):
        return _unavailable(_dependency_of(exc), _RETRY_AFTER_DOWN)
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
        ResourceClosedError,
        OSError,
        TimeoutError,
        asyncio.TimeoutError,
    ]
    types.append(CircuitOpenError)
    return tuple(types)
