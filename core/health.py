"""Health as data: named checks run concurrently, each with its own timeout.

A report says which checks passed, their latency and whether the service is ready; it never
contains internal error text or secrets, so it is safe to serve publicly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CheckResult", "HealthCheck", "HealthRegistry", "HealthReport"]

log = logging.getLogger("dualcore.health")

Status = Literal["ok", "fail", "timeout"]


@dataclass(frozen=True)
class HealthCheck:
    """A named probe: an async callable that raises (or times out) when unhealthy."""

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
    """All check results; ready when every required check passed."""

    checks: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        """True when all required checks are ok."""
        return all(c.status == "ok" for c in self.checks if c.required)

    @property
    def status_code(self) -> int:
        """The HTTP status a readiness endpoint answers with."""
        return 200 if self.ready else 503

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready body, identical for every framework."""
        return {
            "status": "ok" if self.ready else "fail",
            "checks": {c.name: c.to_dict() for c in self.checks},
        }


@dataclass
class HealthRegistry:
    """The set of checks a service runs for readiness."""

    checks: list[HealthCheck] = field(default_factory=list)

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
        """Run every check concurrently, each bounded by its own timeout."""
        results = await asyncio.gather(*(_run_one(c) for c in self.checks))
        return HealthReport(tuple(results))


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
