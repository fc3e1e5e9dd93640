"""HTTP policy shared by the adapters: which errors become 503 or 409, and health bodies.

Adapters only translate these decisions into their framework's response objects, so both
frameworks answer the same status, headers and body for the same failure.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from asyncpg.exceptions import InterfaceError as PgInterfaceError
from asyncpg.exceptions import PostgresError
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.errors import ResourceClosedError

if sys.version_info < (3, 11):  # pragma: no cover - exercised by the 3.10 CI session
    from exceptiongroup import ExceptionGroup
from core.resilience import CircuitOpenError, is_serialization_failure, is_transient, origin_of

__all__ = [
    "LIVENESS_BODY",
    "ConflictBody",
    "DocumentedResponse",
    "ErrorResponse",
    "UnavailableBody",
    "documented_responses",
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


DATABASE, REDIS = "database", "redis"

_CONFLICT = ErrorResponse(409, {"detail": "Conflict with the current state of the resource"})


class ConflictBody(BaseModel):
    """Body of the core's 409: an integrity violation or a serialization failure that outlived
    its retries."""

    detail: str


class UnavailableBody(BaseModel):
    """Body of the core's 503: which dependency is unavailable (`database`, `redis`, a
    breaker's or resource's name); the `Retry-After` header says when to try again."""

    detail: str
    dependency: str


@dataclass(frozen=True)
class DocumentedResponse:
    """An answer the core may give a route, for the adapters to put in the OpenAPI document."""

    description: str
    model: type[BaseModel]
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


_DOCUMENTED_CONFLICT = DocumentedResponse(
    "Conflict: the write broke a constraint or lost a serialization race (nothing committed)",
    ConflictBody,
)
_DOCUMENTED_UNAVAILABLE = DocumentedResponse(
    "A dependency (database, Redis) is unavailable or saturated; retry after Retry-After",
    UnavailableBody,
    {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
)


def documented_responses(*, core_dependency: bool, writes: bool) -> dict[int, DocumentedResponse]:
    """The answers the core may give a route: 503 to any route using a core dependency (a
    session, the Redis client, the cache), and 409 as well to one using a read-write session."""
    found: dict[int, DocumentedResponse] = {}
    if writes:
        found[409] = _DOCUMENTED_CONFLICT
    if core_dependency or writes:
        found[503] = _DOCUMENTED_UNAVAILABLE
    return found


def error_response_for(exc: BaseException) -> ErrorResponse | None:
    """The response for an error the core knows how to answer, or None to let the framework
    handle it.

    503 + Retry-After: the database or Redis unreachable (a transient connection-level error
    raised by their own clients, as `core.resilience.is_transient` classifies it), a pool wait
    that timed out, an open circuit breaker, a dependency that failed its start-up checks, the
    cache unable to reach Redis (`CacheUnavailable`: a write before it may have committed, so
    the client is told to retry rather than that it failed). 409: an integrity violation
    (including a deferred constraint failing at COMMIT) or a serialization failure/deadlock
    that outlived its retries. The same exception types raised by application code (an app's
    own `FileNotFoundError` or `TimeoutError`) are left to the framework: a 500.
    """
    from core.cache.errors import CacheUnavailable
    from core.runtime import DependencyUnavailable

    if isinstance(exc, ExceptionGroup):
        # Litestar cleans up several generator dependencies at once in a task group: a commit
        # that fails there arrives wrapped.
        for inner in exc.exceptions:
            mapped = error_response_for(inner)
            if mapped is not None:
                return mapped
        return None
    if isinstance(exc, PoolTimeoutError):
        return _unavailable(DATABASE, _RETRY_AFTER_BUSY)
    if isinstance(exc, IntegrityError) or is_serialization_failure(exc):
        return _CONFLICT
    if isinstance(exc, CircuitOpenError):
        return _unavailable(exc.name, exc.retry_after or _RETRY_AFTER_BUSY)
    if isinstance(exc, ResourceClosedError):
        return _unavailable(exc.dependency, _RETRY_AFTER_DOWN)
    if isinstance(exc, DependencyUnavailable):
        # One name per dependency in every answer: PostgreSQL is "database" here as elsewhere.
        name = exc.dependency.lower()
        return _unavailable(DATABASE if name == "postgresql" else name, _RETRY_AFTER_DOWN)
    if isinstance(exc, CacheUnavailable):
        return _unavailable(REDIS, _RETRY_AFTER_DOWN)
    dependency = _dependency_of(exc)
    if dependency is not None and is_transient(exc):
        return _unavailable(dependency, _RETRY_AFTER_DOWN)
    return None


def _dependency_of(exc: BaseException) -> str | None:
    if isinstance(exc, (RedisError, RedisClusterException)):
        return REDIS
    if isinstance(exc, DBAPIError):
        return DATABASE
    return origin_of(exc)


def handled_exception_types() -> tuple[type[Exception], ...]:
    """The exception classes adapters register handlers for; `error_response_for` decides."""
    from core.cache.errors import CacheUnavailable
    from core.runtime import DependencyUnavailable

    types: list[type[Exception]] = [
        PoolTimeoutError,
        DBAPIError,
        # asyncpg's own errors reach the app unwrapped when they happen while connecting.
        PostgresError,
        PgInterfaceError,
        RedisConnectionError,
        RedisTimeoutError,
        DependencyUnavailable,
        ResourceClosedError,
        CacheUnavailable,
        OSError,
        TimeoutError,
        asyncio.TimeoutError,
        ExceptionGroup,
    ]
    types.append(CircuitOpenError)
    return tuple(types)
