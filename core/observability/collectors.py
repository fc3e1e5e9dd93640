"""Scrape-time collectors: database pool usage and circuit breaker state."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["BreakerCollector", "BreakerLike", "PoolCollector"]


class BreakerLike(Protocol):
    """Anything with a `name` and a `state` Enum whose values are "closed"/"open"/"half_open"."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> Enum: ...


class PoolCollector:
    """Reports SQLAlchemy pool usage, read from the engine's current pool at scrape time.

    Accepts an `AsyncEngine` or an `Engine`; the pool is looked up on every scrape because
    `engine.dispose()` replaces it. Pools without counters (NullPool, StaticPool) report nothing.
    """

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._engines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, engine: Any, name: str) -> None:
        """Watch the pool of `engine` under the label `pool=name` (replacing a previous one)."""
        with self._lock:
            self._engines[name] = getattr(engine, "sync_engine", engine)

    def remove(self, name: str) -> None:
        """Stop watching the pool named `name`."""
        with self._lock:
            self._engines.pop(name, None)

    def _families(self) -> list[GaugeMetricFamily]:
        p = self._prefix
        return [
            GaugeMetricFamily(f"{p}db_pool_size", "Configured pool size.", labels=["pool"]),
            GaugeMetricFamily(
                f"{p}db_pool_checked_out", "Connections currently in use.", labels=["pool"]
            ),
            GaugeMetricFamily(
                f"{p}db_pool_checked_in", "Idle connections in the pool.", labels=["pool"]
            ),
            GaugeMetricFamily(
                f"{p}db_pool_overflow",
                "Connections beyond pool size (negative: not yet opened).",
                labels=["pool"],
            ),
        ]

    def describe(self) -> Iterable[Metric]:
        """Metric names, so registries detect clashes without collecting."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Current pool counters per watched engine."""
        families = self._families()
        with self._lock:
            engines = list(self._engines.items())
        for name, engine in engines:
            pool = getattr(engine, "pool", None)
            if pool is None or not hasattr(pool, "checkedout"):
                continue
            for family, read in zip(
                families, (pool.size, pool.checkedout, pool.checkedin, pool.overflow), strict=True
            ):
                family.add_metric([name], float(read()))
        yield from families


class BreakerCollector:
    """Reports each breaker's state as one 0/1 sample per possible state, Prometheus enum style."""

    def __init__(self, prefix: str = "") -> None:
        self._name = f"{prefix}circuit_breaker_state"
        self._breakers: list[BreakerLike] = []
        self._lock = threading.Lock()

    def add(self, breaker: BreakerLike) -> None:
        """Watch `breaker` (its name becomes the `name` label)."""
        with self._lock:
            self._breakers.append(breaker)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self._name, "Circuit breaker state (1 for the current state).", labels=["name", "state"]
        )

    def describe(self) -> Iterable[Metric]:
        """Metric names, so registries detect clashes without collecting."""
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        """One sample per (breaker, state) with 1 for the current state."""
        family = self._family()
        with self._lock:
            breakers = list(self._breakers)
        for breaker in breakers:
            current = breaker.state
            states = [m.value for m in type(current)] if isinstance(current, Enum) else [current]
            now = current.value if isinstance(current, Enum) else current
            for state in states:
                family.add_metric([breaker.name, str(state)], 1.0 if state == now else 0.0)
        yield family
