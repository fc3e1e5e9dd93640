"""The whole observability stack from settings: middleware in order, plus engine hooks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import ObservabilitySettings
from core.observability.access_log import AccessLogger, AccessLogMiddleware, make_access_logger
from core.observability.asgi_types import ASGIApp, Message, Receive, Scope, Send
from core.observability.http_metrics import HttpMetrics
from core.observability.labels import route_label
from core.observability.metrics import Metrics, MetricsMiddleware
from core.observability.request_id import (
    RequestIdMiddleware,
    RequestIdPolicy,
    reset_request_id,
    set_request_id,
)
from core.observability.slow_query import install_slow_query_log
from core.observability.tracing import TracingMiddleware, tracing_available

__all__ = [
    "MiddlewareSpec",
    "ObservabilityMiddleware",
    "observability_middleware",
    "observe_engine",
]

MiddlewareSpec = tuple[Callable[..., ASGIApp], dict[str, Any]]
"""`(middleware class, keyword arguments)`; the class is called as `cls(app, **kwargs)`."""


def observability_middleware(
    settings: ObservabilitySettings,
    metrics: Metrics | None = None,
    *,
    access_logger: logging.Logger | None = None,
    tracer_provider: Any = None,
) -> list[MiddlewareSpec]:
    """The enabled middleware, outermost first: request id, tracing, access log, metrics.

    Request id is outermost so every inner layer (and the app) sees the id; the 500 it sends for
    an unhandled exception is then also logged and counted by the inner layers. `metrics` is
    required when `settings.metrics_enabled`, as the same object must back the `/metrics` route.
    Tracing is included only when enabled and OpenTelemetry is importable; its spans go to
    `tracer_provider` (default: OpenTelemetry's global one).
    """
    specs: list[MiddlewareSpec] = [(RequestIdMiddleware, {"header": settings.request_id_header})]
    if settings.tracing and tracing_available():
        specs.append((TracingMiddleware, {"tracer_provider": tracer_provider}))
    if settings.access_log:
        kwargs: dict[str, Any] = {"format": settings.log_format}
        if access_logger is not None:
            kwargs["logger"] = access_logger
        if settings.structlog:
            kwargs["structlog"] = True
        specs.append((AccessLogMiddleware, kwargs))
    if settings.metrics_enabled:
        if metrics is None:
            raise ValueError("metrics_enabled needs the Metrics object that /metrics exposes")
        specs.append((MetricsMiddleware, {"metrics": metrics}))
    return specs


class ObservabilityMiddleware:
    """The whole stack as one ASGI middleware, for wrapping an app from the outside.

    Behaves as the chain `observability_middleware(settings, metrics)` describes; non-HTTP scopes
    reach `app` directly. Without tracing, the layers run fused in one call (one send wrapper,
    one clock, one route lookup) rather than as nested middleware: same headers, log lines and
    metrics, at a fraction of the per-request cost.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: ObservabilitySettings,
        metrics: Metrics | None = None,
        access_logger: logging.Logger | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        chain = app
        specs = observability_middleware(
            settings, metrics, access_logger=access_logger, tracer_provider=tracer_provider
        )
        for cls, kwargs in reversed(specs):
            chain = cls(chain, **kwargs)
        self._chain = chain
        # The fused path knows exactly these three layers; anything else runs as the chain.
        known = {RequestIdMiddleware, AccessLogMiddleware, MetricsMiddleware}
        self._fused = all(cls in known for cls, _ in specs)
        self._policy = RequestIdPolicy(settings.request_id_header)
        self._access: AccessLogger | None = None
        self._http: HttpMetrics | None = None
        for cls, kwargs in specs:
            if cls is AccessLogMiddleware:
                self._access = make_access_logger(**kwargs)
            elif cls is MetricsMiddleware:
                self._http = kwargs["metrics"].http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run an HTTP request through the stack; other scopes reach `app` untouched."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._fused:
            await self._chain(scope, receive, send)
            return
        # Mirrors RequestIdMiddleware(AccessLogMiddleware(MetricsMiddleware(app))).
        policy = self._policy
        request_id, header = policy.pick(scope)
        access = self._access
        if access is not None and not access.enabled():
            access = None
        http = self._http
        # Read before the app runs: routers may rewrite the path in the shared scope.
        path = scope["path"]
        query = scope.get("query_string", b"")
        status = 0  # stays 0 until the response starts
        end = 0.0

        # A plain function returning the server's awaitable: the app awaits that directly, so
        # observing a message costs no coroutine of its own.
        def send_observed(message: Message) -> Awaitable[None]:
            nonlocal status, end
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = policy.add_header(message, header)
            elif kind == "http.response.body" and not message.get("more_body", False):
                end = perf_counter()
            return send(message)

        token = set_request_id(request_id)
        if http is not None:
            http.started()
        start = perf_counter()
        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            if not status:
                await policy.send_error(send, header)
            raise
        finally:
            try:
                if not end:
                    status, end = 500, perf_counter()
                if http is not None or access is not None:
                    route = route_label(scope, status)
                    if http is not None:
                        http.finished(scope["method"], route, status, end - start)
                    if access is not None:
                        access.emit(scope, route, path, query, status, end - start, request_id)
            finally:
                reset_request_id(token)


def observe_engine(
    engine: AsyncEngine | Engine,
    settings: ObservabilitySettings,
    metrics: Metrics | None = None,
    *,
    name: str = "primary",
) -> Callable[[], None]:
    """Hook an engine up: slow-query log (unless the threshold is 0) and pool metrics.

    Returns a function undoing both.
    """
    undo: list[Callable[[], None]] = []
    if settings.slow_query_threshold > 0:
        undo.append(
            install_slow_query_log(
                engine,
                settings.slow_query_threshold,
                log_parameters=settings.log_query_parameters,
                format=settings.log_format,
                structlog=settings.structlog,
            )
        )
    if metrics is not None and settings.metrics_enabled:
        metrics.watch_pool(engine, name)
        undo.append(lambda: metrics.pools.remove(name))

    def undo_all() -> None:
        for fn in reversed(undo):
            fn()

    return undo_all
