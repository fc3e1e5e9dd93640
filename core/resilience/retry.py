"""Bounded retries with full-jitter exponential backoff.

Only transient errors are retried, only for idempotent work, never more than `attempts` tries and
never past `max_time`: a pause that would end after the deadline is not taken and no attempt starts
after it. `max_time` bounds the retrying, not an attempt in flight; each call carries its own
timeout.

When retrying gives up, the last real error is raised unchanged (no wrapper), so callers keep
catching what they already catch. It carries a note (`__notes__`, shown in tracebacks on Python
3.11+) and `retry_attempts(exc)` tells how many attempts were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from core.resilience.errors import is_transient

if TYPE_CHECKING:
    from core.config import ResilienceSettings

__all__ = ["OnRetry", "RetryPolicy", "retry", "retry_attempts"]

T = TypeVar("T")

OnRetry = Callable[[int, BaseException, float], object]
"""`on_retry(attempt, exc, delay)`: attempt number that failed (1-based), its error, the pause."""

_ATTEMPTS_ATTR = "_dualcore_retry_attempts"
# 2**64 times any sane base delay already exceeds every max_delay; avoids float overflow.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; `policy.call(fn)` runs `fn` under it.

    The pause after failed attempt n (0-based) is `uniform(0, min(max_delay, base_delay * 2**n))`
    ("full jitter"), or exactly that bound with `jitter=False`. `clock`, `sleep` and `uniform` are
    injectable for deterministic tests.
    """

    attempts: int = 3
    max_time: float = 5.0
    base_delay: float = 0.05
    max_delay: float = 1.0
    jitter: bool = True
    retry_on: Callable[[BaseException], bool] = is_transient
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    sleep: Callable[[float], Awaitable[Any]] = field(default=anyio.sleep, repr=False, compare=False)
    uniform: Callable[[float, float], float] = field(
        default=random.uniform, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not self.max_time > 0:
            raise ValueError("max_time must be positive")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    @classmethod
    def from_settings(cls, settings: ResilienceSettings, **overrides: Any) -> RetryPolicy:
        """A policy from the `resilience` settings group; keyword overrides win."""
        values: dict[str, Any] = {
            "attempts": settings.retry_attempts,
            "max_time": settings.retry_max_time,
            "base_delay": settings.retry_base_delay,
            "max_delay": settings.retry_max_delay,
        }
        values.update(overrides)
        return cls(**values)

    def backoff_cap(self, n: int) -> float:
        """Upper bound of the pause after failed attempt `n` (0-based)."""
        return min(self.max_delay, self.base_delay * 2.0 ** min(n, _MAX_EXPONENT))

    def next_delay(self, n: int) -> float:
        """A pause after failed attempt `n` (0-based), jittered unless `jitter` is off."""
        cap = self.backoff_cap(n)
        if not self.jitter:
            return cap
        return min(cap, max(0.0, self.uniform(0.0, cap)))

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = True,
        on_retry: OnRetry | None = None,
    ) -> T:
        """Same as `retry(fn, self, ...)`."""
        return await retry(fn, self, idempotent=idempotent, on_retry=on_retry)


def retry_attempts(exc: BaseException) -> int | None:
    """How many attempts were made before `exc` was raised by `retry`, or None."""
    value = getattr(exc, _ATTEMPTS_ATTR, None)
    return value if isinstance(value, int) else None


def _give_up(exc: BaseException, attempts: int, elapsed: float, reason: str) -> None:
    note = f"retry: gave up after {attempts} attempt(s) in {elapsed:.3f}s ({reason})"
    # `add_note` exists from 3.11; on 3.10 the same `__notes__` list is kept by hand.
    with contextlib.suppress(AttributeError):  # exception types with __slots__
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:
            exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined,unused-ignore]
        setattr(exc, _ATTEMPTS_ATTR, attempts)


def _cancel_pending() -> bool:
    """True when the current asyncio task has been asked to cancel (Python 3.11+).

    Guards against libraries that turn a cancellation into an ordinary error.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False  # not running under asyncio
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


async def retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    on_retry: OnRetry | None = None,
) -> T:
    """Await `fn()`, retrying transient failures under `policy`.

    With `idempotent=False`, `fn` runs exactly once. Cancellation is never retried. `on_retry`
    is called before each pause; an error it raises propagates.
    """
    if not idempotent:
        return await fn()
    start = policy.clock()
    deadline = start + policy.max_time
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            error = exc
            delay, reason = _plan(policy, attempt, exc, deadline)
            if reason is not None:
                if reason != "not retryable" or attempt > 1:
                    _give_up(exc, attempt, policy.clock() - start, reason)
                raise
        if on_retry is not None:
            on_retry(attempt, error, delay)
        await policy.sleep(delay)
        if policy.clock() >= deadline:
            # The pause overran (a busy loop): starting now would break the time bound.
            _give_up(error, attempt, policy.clock() - start, "time limit")
            raise error


def _plan(
    policy: RetryPolicy, attempt: int, exc: Exception, deadline: float
) -> tuple[float, str | None]:
    """The pause before the next attempt, or the reason to stop."""
    if not policy.retry_on(exc):
        return 0.0, "not retryable"
    if _cancel_pending():
        return 0.0, "cancelled"
    if attempt >= policy.attempts:
        return 0.0, "attempt limit"
    delay = policy.next_delay(attempt - 1)
    if policy.clock() + delay >= deadline:
        return 0.0, "time limit"
    return delay, None
