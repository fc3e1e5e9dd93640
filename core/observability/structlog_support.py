"""structlog support: the request id in every event, and the access log as structlog events.

Nothing here imports structlog until a structlog logger is asked for, so the core keeps working
without it; `structlog_processor` itself is a plain function any processor chain can hold.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from core.observability.access_log import ACCESS_LOGGER, AccessLogger, mask_query
from core.observability.asgi_types import Scope
from core.observability.formatting import FIELDS_ATTR
from core.observability.request_id import get_request_id

__all__ = ["ACCESS_EVENT", "StructlogAccessLogger", "structlog_processor"]

ACCESS_EVENT = "request"
"""The `event` of access-log entries emitted through structlog."""

_MAX_LOGGED = 1024
_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def structlog_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor adding `request_id` (the id of the request being handled) to every
    event that has none; outside a request it adds nothing.

    In a `structlog.stdlib.ProcessorFormatter`'s `foreign_pre_chain`, it also unpacks the
    stdlib access-log and slow-query records into their fields (method, route, status,
    duration_ms... as keys, `event` "request" or "slow_query"), in place of their pre-rendered
    JSON or logfmt line.
    """
    record = event_dict.get("_record")
    if record is not None and not event_dict.get("_from_structlog", True):
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key != "event":
                    event_dict.setdefault(key, value)
            if "event" in fields:
                event_dict["event"] = fields["event"]
            elif record.name == ACCESS_LOGGER:
                event_dict["event"] = ACCESS_EVENT
    if "request_id" not in event_dict:
        request_id = get_request_id()
        if request_id is not None:
            event_dict["request_id"] = request_id
    return event_dict


class StructlogAccessLogger(AccessLogger):
    """The access log as one structlog event per request (`OBSERVABILITY__STRUCTLOG=true`).

    The event is "request" with the same fields as the stdlib line (method, route, path, query
    when present, status, duration_ms, request_id, client), logged on
    `structlog.get_logger("dualcore.access")` at `level`; the service's structlog configuration
    decides filtering and rendering.
    """

    def __init__(self, level: int = logging.INFO, name: str = ACCESS_LOGGER) -> None:
        import structlog

        super().__init__(logging.getLogger(name), "json", level)
        # The lazy proxy: structlog configured after this point still applies.
        self._structlog = structlog.get_logger(name)
        self._method = _METHODS.get(level, "info")

    def enabled(self) -> bool:
        """Always: structlog's own configuration filters levels."""
        return True

    def emit(
        self,
        scope: Scope,
        route: str,
        path: str,
        query: bytes,
        status: int,
        duration: float,
        request_id: str | None,
    ) -> None:
        """Log one request as a structlog event."""
        # The same fields, in the same order, as `AccessLogger.emit` (a test holds them equal).
        if len(path) > _MAX_LOGGED:
            path = path[:_MAX_LOGGED] + "..."
        fields: dict[str, Any] = {"method": scope["method"], "route": route, "path": path}
        if query:
            fields["query"] = mask_query(query)
        client = scope.get("client")
        fields["status"] = status
        fields["duration_ms"] = int(duration * 1_000_000.0 + 0.5) / 1000
        fields["request_id"] = request_id
        fields["client"] = client[0] if client else None
        getattr(self._structlog, self._method)(ACCESS_EVENT, **fields)
