"""Prometheus metrics: HTTP middleware, cache and retry hooks, pool/breaker gauges, exposition."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from core.cache.hooks import CacheEvent
from core.observability.asgi_types import ASGIApp, Receive, Scope, Send
from core.observability.collectors import BreakerCollector, BreakerLike, PoolCollector
from core.observability.http_metrics import HttpMetrics, HttpStats, SharedHttpStats
from core.observability.labels import route_label
from core.observability.response import ResponseWatch

__all__ = [
    "CACHE_EVENTS",
    "DEFAULT_BUCKETS",
    "CacheMetrics",
    "Metrics",
    "MetricsMiddleware",
    "metrics_response",
]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CACHE_EVENTS: tuple[str, ...] = get_args(CacheEvent)
"""The events `core.cache.Cache` reports to its metrics hook."""
_CACHE_ALIASES = {
    "hit": "hits",
    "miss": "misses",
    "error": "errors",
    "decode_failure": "decode_failures",
    "loader_call": "loader_calls",
}
_LOADER_EVENTS = frozenset({"loader_calls", "loader_call"})


class Metrics:
    """All metric objects of one app, registered in one registry.

    By default each instance gets its own `CollectorRegistry`, so apps and tests never share
    state; pass `prometheus_client.REGISTRY` to use the global one (once per process).

    Metrics: `http_requests_total{method,route,status}`, `http_request_duration_seconds{method,
    route}`, `http_requests_in_progress`, `cache_events_total{cache,event}`,
    `cache_loader_duration_seconds{cache}`, `retries_total{operation}`, and at scrape time
    `db_pool_*{pool}` and `circuit_breaker_state{name,state}`. `namespace` prefixes every name.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        prefix = f"{namespace}_" if namespace else ""
        self.http: HttpMetrics
        """HTTP request count, duration and in-progress; in this process unless multiprocess."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.http = SharedHttpStats(reg, namespace, buckets)
        else:
            stats = HttpStats(prefix, buckets)
            reg.register(stats)
            self.http = stats
        self.cache_events = Counter(
            "cache_events",
            "Cache events (hits, misses, errors, decode_failures, loader_calls, ...) by cache.",
            ["cache", "event"],
            namespace=namespace,
            registry=reg,
        )
        self.cache_loader_duration = Histogram(
            "cache_loader_duration_seconds",
            "Duration of cache loader calls (the work a miss costs), by cache.",
            ["cache"],
            namespace=namespace,
            registry=reg,
            buckets=buckets,
        )
        self.retries = Counter(
            "retries",
            "Retried attempts of transient failures, by operation.",
            ["operation"],
            namespace=namespace,
            registry=reg,
        )
        self.pools = PoolCollector(prefix)
        self.breakers = BreakerCollector(prefix)
        reg.register(self.pools)
        reg.register(self.breakers)

    def cache(self, name: str = "default") -> CacheMetrics:
        """Event counters for the cache called `name`; pass `.on_event` as the cache's hook."""
        return CacheMetrics(self, name)

    def on_retry(self, operation: str = "default") -> None:
        """Count one retried attempt of `operation` (keep operation names a fixed set)."""
        self.retries.labels(operation).inc()

    def retry_hook(self, operation: str) -> Callable[[int, BaseException, float], None]:
        """An `on_retry(attempt, exc, delay)` callback for `core.resilience.retry`."""
        inc = self.retries.labels(operation).inc

        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            inc()

        return on_retry

    def watch_pool(self, engine: Any, name: str = "primary") -> None:
        """Report the pool of a SQLAlchemy `AsyncEngine` or `Engine` as `pool=name`."""
        self.pools.add(engine, name)

    def watch_breaker(self, *breakers: BreakerLike) -> None:
        """Report the state of circuit breakers (objects with `.name` and an Enum `.state`)."""
        for breaker in breakers:
            self.breakers.add(breaker)


class CacheMetrics:
    """Counts the events of one named cache; pass it (or `.on_event`) as the cache's hook.

    Matches `core.cache.MetricsHook`, `hook(event, value)`: every event adds 1 to
    `cache_events_total{cache,event}`, and `loader_calls` also observes `value` (the loader's
    duration) in `cache_loader_duration_seconds{cache}`. Singular names ("hit", "miss", "error",
    "decode_failure", "loader_call") are accepted as aliases; unknown names count as "other".
    """

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        counter = metrics.cache_events
        incs: dict[str, Callable[[], None]] = {
            event: counter.labels(name, event).inc for event in CACHE_EVENTS
        }
        for alias, event in _CACHE_ALIASES.items():
            incs[alias] = incs[event]
        self._incs = incs
        self._other = counter.labels(name, "other").inc
        self._loader = metrics.cache_loader_duration.labels(name).observe

    def on_event(self, event: str, value: float = 1.0) -> None:
        """Count one event; for loader calls `value` is the loader's duration in seconds."""
        self._incs.get(event, self._other)()
        if event in _LOADER_EVENTS:
            self._loader(value)

    __call__ = on_event


def metrics_response(metrics: Metrics) -> tuple[bytes, str]:
    """The Prometheus text exposition of `metrics` as `(body, content_type)`.

    With `PROMETHEUS_MULTIPROC_DIR` set (it must be set before prometheus-client is imported),
    counters, histograms and gauges are aggregated across all worker processes from that
    directory; pool and breaker gauges describe the process answering the scrape.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        collector: Any = MultiProcessCollector  # untyped in some prometheus-client versions
        collector(registry)
        registry.register(metrics.pools)
        registry.register(metrics.breakers)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware counting and timing HTTP requests.

    Labels are the normalised method, the route template (unmatched paths share one label) and
    the status; a request whose app raised before completing its response counts as 500.
    Duration runs until the final body chunk, so streamed responses are measured whole.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics if metrics is not None else Metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; non-HTTP scopes pass straight through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = ResponseWatch(send)
        http = self.metrics.http
        http.started()
        start = perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            status, end = watch.finish()
            http.finished(scope["method"], route_label(scope, status), status, end - start)
