"""Log SQL statements slower than a threshold, through SQLAlchemy cursor events."""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from core.observability.formatting import FIELDS_ATTR, LogFormat, renderer
from core.observability.request_id import get_request_id

__all__ = ["SLOW_QUERY_LOGGER", "install_slow_query_log"]

SLOW_QUERY_LOGGER = "dualcore.slow_query"

_START = "dualcore_query_start"
_MAX_STATEMENT = 2000
_MAX_PARAMETERS = 1000


def install_slow_query_log(
    engine: AsyncEngine | Engine,
    threshold_seconds: float,
    *,
    log_parameters: bool = False,
    logger: logging.Logger | None = None,
    format: LogFormat = "json",
    structlog: bool = False,
) -> Callable[[], None]:
    """Log at WARNING every statement on `engine` taking longer than `threshold_seconds`.

    The line carries duration_ms, the statement (as sent, with placeholders; capped at 2000
    characters), request_id, the driver's error class for a statement that failed slowly (a
    statement timeout shows as `QueryCanceledError` with asyncpg), and the bound
    parameters only when `log_parameters` is true: they may hold personal data or secrets.
    With `structlog`, each is a structlog event "slow_query" with those fields instead (on a
    structlog logger of the same name). Returns a function that removes the hooks.
    """
    if not threshold_seconds > 0:
        raise ValueError("threshold_seconds must be > 0")
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    log = logger if logger is not None else logging.getLogger(SLOW_QUERY_LOGGER)
    render = renderer(format)
    events: Any = None
    if structlog:
        import structlog as _structlog

        events = _structlog.get_logger(log.name)

    def emit(elapsed: float, statement: str, parameters: Any, error: str | None) -> None:
        if events is None and not log.isEnabledFor(logging.WARNING):
            return
        fields: dict[str, object] = {
            "event": "slow_query",
            "duration_ms": round(elapsed * 1000.0, 3),
            "statement": statement[:_MAX_STATEMENT],
        }
        if log_parameters:
            fields["parameters"] = repr(parameters)[:_MAX_PARAMETERS]
        if error is not None:
            fields["error"] = error
        fields["request_id"] = get_request_id()
        if events is not None:
            events.warning(**fields)
            return
        log.warning(render(fields), extra={FIELDS_ATTR: fields})

    # One statement runs at a time per connection, so one slot in its info dict is enough.
    def before(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        conn.info[_START] = perf_counter()

    def after(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        start = conn.info.pop(_START, None)
        if start is not None and (elapsed := perf_counter() - start) > threshold_seconds:
            emit(elapsed, statement, parameters, None)

    def failed(ctx: ExceptionContext) -> None:
        try:
            start = ctx.connection.info.pop(_START, None) if ctx.connection is not None else None
        except Exception:  # an invalidated connection has no info left to read
            return
        if start is not None and (elapsed := perf_counter() - start) > threshold_seconds:
            # Class name of the driver's own error (drivers wrap it); never the message text,
            # which may quote parameter values.
            error = ctx.original_exception
            root = error.__cause__ or error
            emit(elapsed, ctx.statement or "", ctx.parameters, type(root).__name__)

    hooks: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", before),
        ("after_cursor_execute", after),
        ("handle_error", failed),
    ]
    for name, fn in hooks:
        event.listen(sync_engine, name, fn)

    def uninstall() -> None:
        for name, fn in hooks:
            if event.contains(sync_engine, name, fn):
                event.remove(sync_engine, name, fn)

    return uninstall
