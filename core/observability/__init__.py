"""Observability shared by every framework: request ids, access logs, metrics, slow queries.

Everything HTTP-facing is pure ASGI middleware; `observability_middleware(settings, metrics)`
gives the stack in order, `metrics_response(metrics)` the body of a `/metrics` route.
"""

from .access_log import ACCESS_LOGGER, AccessLogger, AccessLogMiddleware, mask_query
from .formatting import StructuredFormatter, render_json, render_logfmt
from .http_metrics import HttpStats
from .labels import UNMATCHED
from .metrics import (
    CACHE_EVENTS,
    CacheMetrics,
    Metrics,
    MetricsMiddleware,
    metrics_response,
)
from .request_id import (
    REQUEST_ID_PATTERN,
    RequestIdLogFilter,
    RequestIdMiddleware,
    RequestIdPolicy,
    get_request_id,
    is_valid_request_id,
    new_request_id,
    reset_request_id,
    set_request_id,
)
from .slow_query import SLOW_QUERY_LOGGER, install_slow_query_log
from .stack import ObservabilityMiddleware, observability_middleware, observe_engine
from .tracing import TracingMiddleware, tracing_available

__all__ = [
    "ACCESS_LOGGER",
    "CACHE_EVENTS",
    "REQUEST_ID_PATTERN",
    "SLOW_QUERY_LOGGER",
    "UNMATCHED",
    "AccessLogMiddleware",
    "AccessLogger",
    "CacheMetrics",
    "HttpStats",
    "Metrics",
    "MetricsMiddleware",
    "ObservabilityMiddleware",
    "RequestIdLogFilter",
    "RequestIdMiddleware",
    "RequestIdPolicy",
    "StructuredFormatter",
    "TracingMiddleware",
    "get_request_id",
    "install_slow_query_log",
    "is_valid_request_id",
    "mask_query",
    "metrics_response",
    "new_request_id",
    "observability_middleware",
    "observe_engine",
    "render_json",
    "render_logfmt",
    "reset_request_id",
    "set_request_id",
    "tracing_available",
]
