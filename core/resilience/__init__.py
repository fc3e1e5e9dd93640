"""Resilience: error classification, bounded retries and circuit breakers."""

from core.resilience.breaker import (
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
    StateListener,
)
from core.resilience.errors import (
    TRANSIENT_SQLSTATES,
    is_serialization_failure,
    is_transient,
    mark_origin,
    origin_of,
    sqlstate_of,
)
from core.resilience.retry import OnRetry, RetryPolicy, retry, retry_attempts

__all__ = [
    "TRANSIENT_SQLSTATES",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "OnRetry",
    "Permit",
    "RetryPolicy",
    "StateListener",
    "is_serialization_failure",
    "is_transient",
    "mark_origin",
    "origin_of",
    "retry",
    "retry_attempts",
    "sqlstate_of",
]
