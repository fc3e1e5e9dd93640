"""Observability shared by every framework: request ids, access logs, metrics, slow queries,
tracing, and structlog support (`structlog_processor`).

Everything HTTP-facing is pure ASGI middleware; `observability_middleware(settings, metrics)`
gives the stack in order, `metrics_response(metrics)` the body of a `/metrics` route.
"""

from core.observability.access_log import (
    ACCESS_LOGGER,
    AccessLogger,
    AccessLogMiddleware,
    mask_query,
)
from core.observability.formatting import StructuredFormatter, render_json, render_logfmt
from core.observability.http_metrics import HttpStats
from core.observability.labels import UNMATCHED
from core.observability.metrics import (
    CACHE_EVENTS,
    CacheMetrics,
    Metrics,
    MetricsMiddleware,
    metrics_response,
)
from core.observability.request_id import (
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
from core.observability.slow_query import SLOW_QUERY_LOGGER, install_slow_query_log
from core.observability.stack import (
    ObservabilityMiddleware,
    observability_middleware,
    observe_engine,
)
from core.observability.structlog_support import StructlogAccessLogger, structlog_processor
from core.observability.tracing import TracingMiddleware, tracing_available

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
    "StructlogAccessLogger",
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
    "structlog_processor",
    "tracing_available",
]
