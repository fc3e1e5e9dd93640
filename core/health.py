"""Health as data: named checks run concurrently, each with its own timeout.

A report says which checks passed, their latency and whether the service is ready; it never
contains internal error text or secrets, so it is safe to serve publicly.

Probes are cheap to ask for and bounded in cost to answer: concurrent `HealthRegistry.run()`
calls share one in-flight run, and a finished report is served again for `cache_for` seconds
with its age, so a flood of readiness probes costs each dependency a bounded number of round
trips.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["DEFAULT_CACHE_FOR", "CheckResult", "HealthCheck", "HealthRegistry", "HealthReport"]

log = logging.getLogger("dualcore.health")

Status = Literal["ok", "fail", "timeout"]

DEFAULT_CACHE_FOR = 1.0
"""Seconds a finished report is reused by `HealthRegistry` unless told otherwise."""


@dataclass(frozen=True)
class HealthCheck:
    """A named probe: an async callable that raises (or times out) when unhealthy.

    The probe must let itself be cancelled: its timeout is enforced by cancelling it.
    """

    name: str
    probe: Callable[[], Awaitable[Any]]
    timeout: float = 2.0
    required: bool = True


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    status: Status
    latency_ms: float
    required: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "status": self.status,
            "latency_ms": round(self.latency_ms, 2),
            "required": self.required,
        }


@dataclass(frozen=True)
class HealthReport:
    """All check results; ready when every required check passed.

    `age` is how long ago, in seconds, the checks finished when this report was handed out
    (None for a report not made by `HealthRegistry.run()`): a reused report says how old it is.
    """

    checks: tuple[CheckResult, ...]
    age: float | None = None

    @property
    def ready(self) -> bool:
        """True when all required checks are ok."""
        return all(c.status == "ok" for c in self.checks if c.required)

    @property
    def status_code(self) -> int:
        """The HTTP status a readiness endpoint answers with."""
        return 200 if self.ready else 503

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready body, identical for every framework; `age_ms` when the age is known."""
        body: dict[str, Any] = {
            "status": "ok" if self.ready else "fail",
            "checks": {c.name: c.to_dict() for c in self.checks},
        }
        if self.age is not None:
            body["age_ms"] = round(self.age * 1000, 2)
        return body


@dataclass(frozen=True)
class _Finished:
    checks: tuple[HealthCheck, ...]
    report: HealthReport
    at: float  # time.monotonic() when the last check ended


@dataclass(frozen=True)
class _Flight:
    checks: tuple[HealthCheck, ...]
    task: asyncio.Task[_Finished]


@dataclass
class HealthRegistry:
    """The set of checks a service runs for readiness.

    `run()` calls that overlap share one run of the checks, and a finished report is reused
    for `cache_for` seconds (0: every call after the last run finished starts a new one).
    """

    checks: list[HealthCheck] = field(default_factory=list)
    cache_for: float = DEFAULT_CACHE_FOR
    _flight: _Flight | None = field(default=None, init=False, repr=False, compare=False)
    _finished: _Finished | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.cache_for < math.inf:
            raise ValueError("cache_for must be a finite number of seconds, 0 or more")

    def add(
        self,
        name: str,
        probe: Callable[[], Awaitable[Any]],
        *,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        """Register a check; names are unique."""
        if any(c.name == name for c in self.checks):
            raise ValueError(f"a health check named {name!r} is already registered")
        if timeout <= 0:
            raise ValueError("a health check timeout must be positive")
        self.checks.append(HealthCheck(name, probe, timeout, required))

    async def run(self) -> HealthReport:
        """Run every check concurrently, each bounded by its own timeout, or share a run.

        A report finished less than `cache_for` seconds ago is returned again; otherwise the
        caller joins the run in progress on this event loop or starts one. A caller that is
        cancelled leaves the run to the others, and a run nobody waits for any more still ends
        within its longest check timeout.
        """
        # Compared on every call, so a check added after a run is never missing from a report.
        checks = tuple(self.checks)
        finished = self._finished
        if finished is not None and finished.checks == checks:
            age = time.monotonic() - finished.at
            if age < self.cache_for:
                return replace(finished.report, age=age)
        loop = asyncio.get_running_loop()
        flight = self._flight
        if (
            flight is None
            or flight.task.done()
            or flight.checks != checks
            # A run started on another loop (a test client's, say) cannot be awaited here.
            or flight.task.get_loop() is not loop
        ):
            flight = _Flight(checks, loop.create_task(self._run_checks(checks)))
            self._flight = flight
            flight.task.add_done_callback(self._landed)
        # Shielded: cancelling one caller must not cancel the run the others are waiting for.
        finished = await asyncio.shield(flight.task)
        return replace(finished.report, age=max(0.0, time.monotonic() - finished.at))

    async def _run_checks(self, checks: tuple[HealthCheck, ...]) -> _Finished:
        results = await asyncio.gather(*(_run_one(c) for c in checks))
        finished = _Finished(checks, HealthReport(tuple(results)), time.monotonic())
        latest = self._finished
        if latest is None or latest.at <= finished.at:
            self._finished = finished
        return finished

    def _landed(self, task: asyncio.Task[_Finished]) -> None:
        # Drop the reference so a finished (or abandoned) run and its loop can be collected.
        flight = self._flight
        if flight is not None and flight.task is task:
            self._flight = None


async def _run_one(check: HealthCheck) -> CheckResult:
    start = time.perf_counter()
    status: Status = "ok"
    try:
        await asyncio.wait_for(check.probe(), check.timeout)
    except asyncio.TimeoutError:
        status = "timeout"
    except Exception as exc:
        # Details go to the log, never into the public report.
        log.warning("health check %s failed: %s", check.name, type(exc).__name__)
        status = "fail"
    return CheckResult(check.name, status, (time.perf_counter() - start) * 1000, check.required)
