"""Optional OpenTelemetry tracing (off by default; `pip install 'dualcore[tracing]'`).

`TracingMiddleware` opens the request span; `trace_dependencies` hooks the official SQLAlchemy
and redis-py instrumentation onto a core's own engines and client, and turns cache events into
span events, so one request is one trace. Nothing here imports OpenTelemetry until tracing is
switched on.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.observability.asgi_types import ASGIApp, Message, Receive, Scope, Send
from core.observability.labels import method_label, route_label
from core.observability.request_id import get_request_id

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from core.cache.hooks import CacheEvent, MetricsHook
    from core.config import ObservabilitySettings

__all__ = [
    "CACHE_SPAN_EVENTS",
    "REQUEST_ID_ATTRIBUTE",
    "TracingMiddleware",
    "cache_span_events",
    "instrument_engine",
    "instrument_redis",
    "trace_dependencies",
    "tracing_available",
]

log = logging.getLogger("dualcore.tracing")

REQUEST_ID_ATTRIBUTE = "dualcore.request_id"
"""Attribute of the request span holding the request id (the `request_id` of the log lines)."""

CACHE_SPAN_EVENTS: dict[str, str] = {
    "hits": "cache.hit",
    "local_hits": "cache.local_hit",
    "misses": "cache.miss",
    "stale": "cache.stale",
    "decode_failures": "cache.decode_failure",
    "errors": "cache.error",
    "bypassed": "cache.bypassed",
    "loader_calls": "cache.fill",
    "early_refreshes": "cache.early_refresh",
    "lock_waits": "cache.lock_wait",
    "lock_timeouts": "cache.lock_timeout",
}
"""Span event name for each cache event (`CacheEvent`)."""

_MAX_PARAMETERS = 1000
_NOTHING_TO_UNDO: Callable[[], None] = lambda: None  # noqa: E731

_PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def tracing_available() -> bool:
    """True when the OpenTelemetry API can be imported."""
    return importlib.util.find_spec("opentelemetry") is not None


class TracingMiddleware:
    """Pure ASGI middleware opening one SERVER span per HTTP request.

    The span continues an incoming W3C trace context (`traceparent`), is named
    "METHOD /route/{template}" once routing is known, and records `http.request.method`,
    `url.path`, `http.route` and `http.response.status_code`; 5xx and exceptions mark it as an
    error. The request id (set by `RequestIdMiddleware`, which runs outside this one) is
    recorded as `dualcore.request_id`. Spans go wherever the configured OpenTelemetry SDK sends
    them; with the API alone they are no-ops.
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
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": scope["path"]}
        request_id = get_request_id()
        if request_id is not None:
            attributes[REQUEST_ID_ATTRIBUTE] = request_id
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
            attributes=attributes,
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


def instrument_engine(
    engine: AsyncEngine | Engine,
    *,
    tracer_provider: Any = None,
    log_parameters: bool = False,
) -> Callable[[], None]:
    """One CLIENT span per statement on `engine`, through the official SQLAlchemy
    instrumentation (`opentelemetry-instrumentation-sqlalchemy`); returns a function removing it.

    Spans carry the statement as sent (with placeholders), never its parameters unless
    `log_parameters` (`OBSERVABILITY__LOG_QUERY_PARAMETERS`) allows them: they are then recorded
    as `db.query.parameter.<n>`. Only this engine is instrumented: nothing process-wide is
    patched.
    """
    # The package's `EngineTracer` directly, not `SQLAlchemyInstrumentor().instrument(engine=)`:
    # the instrumentor is a process-wide singleton that also patches `create_engine`, and it
    # refuses SQLAlchemy 2.1 outright (its declared range ends below it).
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import get_meter
    from opentelemetry.trace import get_tracer
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncEngine

    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    name = "opentelemetry.instrumentation.sqlalchemy"
    tracer = get_tracer(name, __version__, tracer_provider)
    connections = get_meter(name, __version__).create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    # The tracer keeps its listeners in one class-wide list of (weak engine, event, listener):
    # this engine's entries are the ones to take out again (its own removal takes out every
    # engine's). Picked by engine, not by position: a collected engine's entries leave the list
    # at any moment, shifting the others.
    registry: list[Any] = EngineTracer._remove_event_listener_params
    EngineTracer(tracer, sync_engine, connections)  # type: ignore[no-untyped-call]
    added = [entry for entry in registry if entry[0]() is sync_engine]
    hooks: list[tuple[str, Callable[..., Any]]] = [(ident, fn) for _, ident, fn in added]
    if log_parameters:

        def record_parameters(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
        ) -> None:
            # Runs after the tracer's own hook, which leaves the statement's span here.
            span = getattr(context, "_otel_span", None)
            if many or span is None or not span.is_recording():
                return
            if isinstance(parameters, dict):
                parameters = parameters.values()
            for index, value in enumerate(parameters or ()):
                span.set_attribute(f"db.query.parameter.{index}", repr(value)[:_MAX_PARAMETERS])

        event.listen(sync_engine, "before_cursor_execute", record_parameters)
        hooks.append(("before_cursor_execute", record_parameters))

    def undo() -> None:
        for ident, fn in hooks:
            if event.contains(sync_engine, ident, fn):
                event.remove(sync_engine, ident, fn)
        for entry in added:
            if entry in registry:
                registry.remove(entry)

    return undo


def instrument_redis(client: Any, *, tracer_provider: Any = None) -> Callable[[], None]:
    """One CLIENT span per command (and per pipeline) sent by `client`, through the official
    redis-py instrumentation (`opentelemetry-instrumentation-redis`); returns a function
    removing it.

    Spans name the command and replace its arguments with `?`. Only this client is
    instrumented, not every redis-py client in the process.
    """
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=tracer_provider)

    def undo() -> None:
        RedisInstrumentor.uninstrument_client(client)
        # `uninstrument_client` leaves its "instrumented" mark set, which would make the next
        # `instrument_client` of this client (a core started again) a silent no-op.
        if getattr(client, "_is_instrumented_by_opentelemetry", False):
            client._is_instrumented_by_opentelemetry = False

    return undo


def cache_span_events(hook: MetricsHook | None = None) -> MetricsHook:
    """A cache event hook adding each event (hit, miss, fill, lock wait...) to the current span,
    then passing it on to `hook` (the metrics, usually).

    Names are in `CACHE_SPAN_EVENTS`; a fill carries its loader's duration as `duration_s`.
    """
    from opentelemetry.trace import get_current_span

    names = CACHE_SPAN_EVENTS

    def on_event(kind: CacheEvent, value: float) -> None:
        span = get_current_span()
        if span.is_recording():
            if kind == "loader_calls":
                span.add_event(names[kind], {"duration_s": value})
            else:
                span.add_event(names[kind])
        if hook is not None:
            hook(kind, value)

    return on_event


def trace_dependencies(
    settings: ObservabilitySettings,
    *,
    engines: Sequence[AsyncEngine | Engine] = (),
    redis: Any = None,
    tracer_provider: Any = None,
) -> Callable[[], None]:
    """Trace SQL on `engines`, the commands of `redis` (a `RedisManager`) and its cache's
    events; returns a function undoing all of it. `Core` calls it at start-up when
    `OBSERVABILITY__TRACING` is on.

    A part whose OpenTelemetry package is missing is left out with a warning rather than failing
    start-up: tracing is diagnostics, not a dependency of the service.
    """
    if not tracing_available():
        log.warning(
            "OBSERVABILITY__TRACING is on but OpenTelemetry is not installed "
            "(pip install 'dualcore[tracing]'): nothing is traced"
        )
        return _NOTHING_TO_UNDO
    undo: list[Callable[[], None]] = []
    try:
        for engine in engines:
            undo.append(
                instrument_engine(
                    engine,
                    tracer_provider=tracer_provider,
                    log_parameters=settings.log_query_parameters,
                )
            )
    except ImportError as exc:
        log.warning("SQL is not traced: %s (pip install 'dualcore[tracing]')", exc)
    if redis is not None:
        try:
            undo.append(instrument_redis(redis.client, tracer_provider=tracer_provider))
        except ImportError as exc:
            log.warning("Redis is not traced: %s (pip install 'dualcore[tracing]')", exc)
        original = redis.cache_metrics
        redis.cache_metrics = cache_span_events(original)

        def restore() -> None:
            redis.cache_metrics = original

        undo.append(restore)

    def undo_all() -> None:
        for fn in reversed(undo):
            fn()

    return undo_all
