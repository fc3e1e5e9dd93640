"""Optional OpenTelemetry spans for HTTP requests (needs `opentelemetry-api`; off by default)."""

from __future__ import annotations

import importlib.util
from typing import Any

from .asgi_types import ASGIApp, Message, Receive, Scope, Send
from .labels import method_label, route_label

__all__ = ["TracingMiddleware", "tracing_available"]

_PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def tracing_available() -> bool:
    """True when the OpenTelemetry API can be imported."""
    return importlib.util.find_spec("opentelemetry") is not None


class TracingMiddleware:
    """Pure ASGI middleware opening one SERVER span per HTTP request.

    The span continues an incoming W3C trace context (`traceparent`), is named
    "METHOD /route/{template}" once routing is known, and records `http.request.method`,
    `url.path`, `http.route` and `http.response.status_code`; 5xx and exceptions mark it as an
    error. Spans go wherever the configured OpenTelemetry SDK sends them; with the API alone they
    are no-ops.
    """

    def __init__(self, app: ASGIApp, *, tracer: Any = None, tracer_provider: Any = None) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.app = app
        self._tracer = tracer or trace.get_tracer("dualcore", tracer_provider=tracer_provider)
        self._extract = propagate.extract
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; non-HTTP scopes pass straight through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in _PROPAGATION_HEADERS
        }
        method = method_label(scope["method"])
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self._tracer.start_as_current_span(
            method,
            context=self._extract(carrier) if carrier else None,
            kind=self._server,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                route = route_label(scope, status)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status or 500)
                if not status or status >= 500:
                    span.set_status(self._error)
