"""HTTP request metrics: count, duration histogram and requests in progress.

Two stores behind one interface (`started()`, `finished(method, route, status, duration)`):
`HttpStats` keeps plain numbers in this process and reports them at scrape time, which makes a
request's bookkeeping one lock and a few additions; `SharedHttpStats` writes through
prometheus-client's metric objects, whose values live in files that prometheus-client's
multiprocess mode aggregates across worker processes.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from core.observability.labels import STANDARD_METHODS, method_label

__all__ = ["HttpMetrics", "HttpStats", "SharedHttpStats"]

REQUESTS = "http_requests"
DURATION = "http_request_duration_seconds"
IN_PROGRESS = "http_requests_in_progress"
_REQUESTS_DOC = "HTTP requests by method, route template and status."
_DURATION_DOC = "HTTP request duration until the last body chunk, by method and route template."
_IN_PROGRESS_DOC = "HTTP requests being handled."
_le: Callable[[float], str] = floatToGoString  # untyped upstream; spells `le` as Histogram does
_MAX_SERIES = 10_000
"""Defensive bound on (method, route, status) series; labels are bounded anyway."""
_BATCH = 128
"""Finished requests queued before they are folded into the series."""


class HttpMetrics(Protocol):
    """What the middleware needs from an HTTP metrics store."""

    def started(self) -> None:
        """A request has begun."""

    def finished(self, method: str, route: str, status: int, duration: float) -> None:
        """A request has ended (`route` from `route_label`, `duration` in seconds)."""


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = sorted(float(b) for b in buckets)
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    return tuple(bounds)


class HttpStats:
    """HTTP metrics of this process, reported to Prometheus as a collector at scrape time.

    Exposes `http_requests_total{method,route,status}`, `http_request_duration_seconds{method,
    route}` (histogram) and `http_requests_in_progress`, as prometheus-client's own metric types
    would (without their `_created` samples). Register it in a registry to export it.
    """

    def __init__(self, prefix: str = "", buckets: Sequence[float] = ()) -> None:
        self._prefix = prefix
        self._bounds = _bounds(buckets)
        self._les = [_le(b) for b in self._bounds]
        # (method, route, status) -> [count, sum, observations per bucket (not cumulative)...]
        self._series: dict[tuple[str, str, int], list[float]] = {}
        # A request's bookkeeping is two list operations, which are atomic, so the request path
        # takes no lock: one entry per request in progress, and finished requests waiting to be
        # counted, folded into the series in batches (and before every scrape).
        self._active: list[None] = []
        self._finished: list[tuple[str, str, int, float]] = []
        self._lock = threading.Lock()

    def started(self) -> None:
        """A request has begun."""
        self._active.append(None)

    def finished(self, method: str, route: str, status: int, duration: float) -> None:
        """A request has ended: count it and observe its duration."""
        if self._active:
            self._active.pop()
        finished = self._finished
        finished.append((method, route, status, duration))
        if len(finished) >= _BATCH:
            self._fold()

    def _fold(self) -> None:
        with self._lock:
            finished = self._finished
            n = len(finished)
            batch = finished[:n]
            # Requests finishing meanwhile were appended after the first n and stay queued.
            del finished[:n]
            all_series = self._series
            bounds = self._bounds
            for method, route, status, duration in batch:
                if method not in STANDARD_METHODS:
                    method = "OTHER"
                key = (method, route, status)
                series = all_series.get(key)
                if series is None:
                    if len(all_series) >= _MAX_SERIES:
                        continue
                    series = all_series[key] = [0.0] * (2 + len(bounds))
                series[0] += 1
                series[1] += duration
                series[2 + bisect_left(bounds, duration)] += 1

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        p = self._prefix
        return (
            CounterMetricFamily(p + REQUESTS, _REQUESTS_DOC, labels=["method", "route", "status"]),
            HistogramMetricFamily(p + DURATION, _DURATION_DOC, labels=["method", "route"]),
            GaugeMetricFamily(p + IN_PROGRESS, _IN_PROGRESS_DOC),
        )

    def describe(self) -> Iterable[Metric]:
        """Metric names, so registries detect clashes without collecting."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Current counts, histograms (merged over statuses) and requests in progress."""
        requests, durations, in_progress = self._families()
        self._fold()
        with self._lock:
            series = [(key, list(values)) for key, values in self._series.items()]
            in_progress.add_metric([], float(len(self._active)))
        merged: dict[tuple[str, str], list[float]] = {}
        for (method, route, status), values in series:
            requests.add_metric([method, route, str(status)], values[0])
            total = merged.get((method, route))
            if total is None:
                merged[(method, route)] = values
            else:
                for i, value in enumerate(values):
                    total[i] += value
        for (method, route), values in merged.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(self._les, values[2:], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            durations.add_metric([method, route], buckets, values[1])
        yield requests
        yield durations
        yield in_progress


class SharedHttpStats:
    """HTTP metrics as prometheus-client `Counter`, `Histogram` and `Gauge` objects.

    Needed in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`), where only values written through
    prometheus-client's own objects reach the aggregated scrape.
    """

    def __init__(
        self, registry: CollectorRegistry, namespace: str = "", buckets: Sequence[float] = ()
    ) -> None:
        self.requests = Counter(
            REQUESTS,
            _REQUESTS_DOC,
            ["method", "route", "status"],
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            DURATION,
            _DURATION_DOC,
            ["method", "route"],
            namespace=namespace,
            registry=registry,
            buckets=buckets,
        )
        self.in_progress = Gauge(
            IN_PROGRESS,
            _IN_PROGRESS_DOC,
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def started(self) -> None:
        """A request has begun."""
        self.in_progress.inc()

    def finished(self, method: str, route: str, status: int, duration: float) -> None:
        """A request has ended: count it and observe its duration."""
        self.in_progress.dec()
        key = (method_label(method), route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(key[0], route, str(status)),
                self.duration.labels(key[0], route),
            )
            if len(self._children) < _MAX_SERIES:
                self._children[key] = children
        children[0].inc()
        children[1].observe(duration)
