"""Circuit breaker: stop calling a dependency that keeps failing, probe it now and then.

closed --(failure_threshold consecutive failures)--> open --(reset_timeout)--> half_open
half_open --(a probe succeeds)--> closed;  half_open --(a probe fails)--> open (timer restarts)

Only errors for which `is_failure(exc)` holds count (transient errors by default). Cancellation
and other errors are neutral: they neither count nor reset the count, and a cancelled half-open
probe gives its slot back. At most `half_open_max_calls` probes run at once, counting probes of an
earlier half-open phase that are still running.

Every admitted call settles exactly once. An outcome that arrives after the breaker changed state
since its admission (a slow call that started before the breaker opened) frees its probe slot but
is otherwise ignored: it says nothing about the current phase.

The breaker serves one event loop and is not thread-safe; transitions are synchronous, so
concurrent tasks cannot interleave inside one.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from core.resilience.errors import is_transient

if TYPE_CHECKING:
    from core.config import ResilienceSettings

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "Permit",
    "StateListener",
]

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger(__name__)


class BreakerState(str, enum.Enum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[str, BreakerState, BreakerState], object]
"""`listener(name, old, new)`, called after each transition."""


class CircuitOpenError(Exception):
    """Raised instead of calling a dependency whose breaker is open.

    `retry_after` is the number of seconds until probes are admitted again; 0 when the breaker is
    half-open and every probe slot is taken.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry after {retry_after:.2f}s")
        self.name = name
        self.retry_after = retry_after


@dataclass(frozen=True)
class BreakerSnapshot:
    """A breaker's state at one moment, for health checks and metrics."""

    name: str
    state: BreakerState
    consecutive_failures: int
    opened_at: float | None
    retry_after: float | None
    probes_in_flight: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the state as its string)."""
        data = asdict(self)
        data["state"] = self.state.value
        return data


class Permit:
    """One call admitted by `CircuitBreaker.admit()`; settle it once with `settle()`."""

    __slots__ = ("generation", "probe", "settled")

    def __init__(self, generation: int, probe: bool) -> None:
        self.generation = generation
        self.probe = probe
        self.settled = False


# Permits admitted by `allow()` in this task and not yet settled, innermost last. A context
# variable keeps concurrent tasks' permits apart without an object per call.
_PERMITS: contextvars.ContextVar[tuple[tuple[CircuitBreaker, Permit], ...]] = (
    contextvars.ContextVar("dualcore_breaker_permits", default=())
)


class CircuitBreaker:
    """A circuit breaker for one dependency.

    Use `async with breaker:` or `await breaker.call(fn, *args)`; both raise `CircuitOpenError`
    when the call is not admitted. The low-level `allow()` / `record_success()` /
    `record_failure(exc)` serve code that cannot wrap the call in a block: each `allow()` that
    returned True must be followed, in the same task, by exactly one record call. `admit()` /
    `settle(permit, exc)` do the same with the permit in the caller's hands, for hot paths:
    no per-task bookkeeping, and the permit may be settled from any task.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        half_open_max_calls: int = 1,
        *,
        is_failure: Callable[[BaseException], bool] = is_transient,
        clock: Callable[[], float] = time.monotonic,
        listeners: Iterable[StateListener] = (),
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not reset_timeout > 0:
            raise ValueError("reset_timeout must be positive")
        if half_open_max_calls < 1:
            raise ValueError("half_open_max_calls must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.is_failure = is_failure
        self.listeners: list[StateListener] = list(listeners)
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0

    @classmethod
    def from_settings(
        cls, name: str, settings: ResilienceSettings, **kwargs: Any
    ) -> CircuitBreaker:
        """A breaker configured from the `resilience` settings group."""
        return cls(
            name,
            settings.breaker_failure_threshold,
            settings.breaker_reset_timeout,
            settings.breaker_half_open_max_calls,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # --- state -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose reset timeout passed reads as half-open."""
        self._refresh()
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        """State, failure count and timing, read at once."""
        state = self.state
        return BreakerSnapshot(
            name=self.name,
            state=state,
            consecutive_failures=self._failures,
            opened_at=self._opened_at,
            retry_after=self._retry_after() if state is not BreakerState.CLOSED else None,
            probes_in_flight=self._probes,
        )

    def _retry_after(self) -> float:
        if self._state is BreakerState.OPEN and self._opened_at is not None:
            return max(0.0, self._opened_at + self.reset_timeout - self._clock())
        return 0.0

    def _refresh(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._opened_at is not None
            and self._clock() - self._opened_at >= self.reset_timeout
        ):
            self._transition(BreakerState.HALF_OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        elif new is BreakerState.CLOSED:
            self._failures = 0
            self._opened_at = None
        for listener in list(self.listeners):
            try:
                listener(self.name, old, new)
            except Exception:
                # A metrics or logging hook must never break the calls it observes.
                logger.exception("breaker %r: state listener failed", self.name)

    # --- admission and outcomes ------------------------------------------------------------

    def admit(self) -> Permit | None:
        """Admit one call now: its permit, or None when refused. Settle the permit exactly once
        with `settle()`."""
        if self._state is BreakerState.OPEN:
            self._refresh()
        if self._state is BreakerState.CLOSED:
            return Permit(self._generation, False)
        if self._state is BreakerState.HALF_OPEN and self._probes < self.half_open_max_calls:
            self._probes += 1
            return Permit(self._generation, True)
        return None

    def settle(self, permit: Permit, exc: BaseException | None = None) -> None:
        """Settle an admitted call: a success (`exc` None) or its error. Errors that are not
        failures (cancellation, business errors) only release the call's probe slot; a permit
        settled again changes nothing."""
        if permit.settled:
            return
        permit.settled = True
        if permit.probe:
            self._probes -= 1
        if permit.generation != self._generation:
            return  # admitted in an earlier phase: says nothing about this one
        if exc is None:
            if self._state is BreakerState.HALF_OPEN:
                self._transition(BreakerState.CLOSED)
            else:
                self._failures = 0
        elif self.is_failure(exc):
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._transition(BreakerState.OPEN)

    def allow(self) -> bool:
        """Admit one call now (True) or refuse it (False). An admitted call must be settled
        with `record_success()` or `record_failure(exc)` in the same task."""
        permit = self.admit()
        if permit is None:
            return False
        _PERMITS.set((*_PERMITS.get(), (self, permit)))
        return True

    def _pop_permit(self) -> Permit:
        stack = _PERMITS.get()
        for i in range(len(stack) - 1, -1, -1):
            owner, permit = stack[i]
            if owner is self:
                _PERMITS.set(stack[:i] + stack[i + 1 :])
                return permit
        # Recorded without a matching allow() in this task: treat as a call of the current
        # phase, and as a probe only if one is outstanding.
        return Permit(self._generation, probe=self._probes > 0)

    def record_success(self) -> None:
        """Settle the call admitted by the latest `allow()` as a success."""
        self.settle(self._pop_permit(), None)

    def record_failure(self, exc: BaseException) -> None:
        """Settle the call admitted by the latest `allow()` with its error. Errors that are not
        failures (cancellation, business errors) only release the call's probe slot."""
        self.settle(self._pop_permit(), exc)

    def _rejection(self) -> CircuitOpenError:
        return CircuitOpenError(self.name, self._retry_after())

    async def __aenter__(self) -> CircuitBreaker:
        if not self.allow():
            raise self._rejection()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.record_success()
        else:
            self.record_failure(exc)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await `fn(*args, **kwargs)` through the breaker."""
        async with self:
            return await fn(*args, **kwargs)
