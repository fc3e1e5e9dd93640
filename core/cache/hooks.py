"""What the cache reports and whom it asks: counters, an event hook, a circuit breaker protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["CacheBreaker", "CacheEvent", "CacheStats", "MetricsHook"]

CacheEvent = Literal[
    "hits",
    "local_hits",
    "misses",
    "stale",
    "decode_failures",
    "errors",
    "bypassed",
    "loader_calls",
    "early_refreshes",
    "lock_waits",
    "lock_timeouts",
]

MetricsHook = Callable[[CacheEvent, float], None]
"""Called as `hook(event, value)`: value is 1.0, except for `loader_calls` where it is the
loader's duration in seconds. Exceptions from the hook are logged, never raised."""


@dataclass
class CacheStats:
    """Plain counters of one `Cache`, updated in place."""

    hits: int = 0
    local_hits: int = 0
    """Hits served from the in-process tier (also counted in hits)."""
    misses: int = 0
    """Lookups that found no usable entry (absent, stale or undecodable) with Redis up."""
    stale: int = 0
    """Entries written before their group was invalidated (also counted in misses)."""
    decode_failures: int = 0
    """Corrupt, foreign or outdated bytes under a key (also counted in misses)."""
    errors: int = 0
    """Redis calls that failed or timed out."""
    bypassed: int = 0
    """Redis calls skipped because the breaker was open."""
    loader_calls: int = 0
    early_refreshes: int = 0
    lock_waits: int = 0
    """Fills that waited for another process holding the fill lock."""
    lock_timeouts: int = 0
    """Waits that gave up after `lock_wait` and called the loader themselves."""

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict."""
        return asdict(self)


@runtime_checkable
class CacheBreaker(Protocol):
    """The circuit breaker interface the cache needs; adapt any breaker to these three calls."""

    def allow(self) -> bool:
        """False while open: the cache then skips Redis entirely."""
        ...

    def record_success(self) -> None:
        """A Redis call succeeded."""
        ...

    def record_failure(self, exc: BaseException) -> None:
        """A Redis call failed or timed out."""
        ...


class Admission(Protocol):
    """How the cache admits and settles each Redis call (a permit in the caller's hands)."""

    def admit(self) -> Any:
        """A permit, or None to skip Redis."""
        ...

    def settle(self, permit: Any, exc: BaseException | None = None) -> None:
        """The outcome of an admitted call: success when `exc` is None."""
        ...


class _Recorded:
    """`admit`/`settle` over a breaker that has only the three `CacheBreaker` calls (settled in
    the task that admitted, as those calls require)."""

    __slots__ = ("_breaker",)

    def __init__(self, breaker: CacheBreaker) -> None:
        self._breaker = breaker

    def admit(self) -> bool | None:
        return True if self._breaker.allow() else None

    def settle(self, permit: Any, exc: BaseException | None = None) -> None:
        if exc is None:
            self._breaker.record_success()
        else:
            self._breaker.record_failure(exc)


def admission(breaker: CacheBreaker) -> Admission:
    """dualcore's own breaker as is (its permits skip the per-task bookkeeping of `allow()`);
    any other breaker, subclasses included, through its three calls."""
    from core.resilience.breaker import CircuitBreaker

    return breaker if type(breaker) is CircuitBreaker else _Recorded(breaker)
