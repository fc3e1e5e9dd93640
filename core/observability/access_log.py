"""One structured access log line per HTTP request."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from json.encoder import encode_basestring
from time import perf_counter
from urllib.parse import unquote_plus

from core.observability.asgi_types import ASGIApp, Receive, Scope, Send
from core.observability.formatting import (
    FIELDS_ATTR,
    LogFormat,
    escape_unsafe,
    logfmt_value,
    renderer,
)
from core.observability.labels import route_label
from core.observability.log_record import RecordTemplate
from core.observability.request_id import get_request_id
from core.observability.response import ResponseWatch

__all__ = [
    "ACCESS_LOGGER",
    "SENSITIVE_KEY",
    "AccessLogMiddleware",
    "AccessLogger",
    "make_access_logger",
    "mask_query",
]

ACCESS_LOGGER = "dualcore.access"

SENSITIVE_KEY = re.compile(
    r"pass|pwd|secret|token|key|auth|sig|code|session|sid|cookie|cred|jwt|otp|nonce|salt"
    r"|private|bearer|hmac",
    re.IGNORECASE,
)
"""Query keys whose values are masked: any key *containing* one of these fragments, in any case.

Deliberately broad (`key` also masks `monkey`, `code` also masks `zipcode`, `sid` also masks
`side`): a masked harmless value costs little, a logged token costs a rotation.
"""

MASK = "***"
_encode = encode_basestring
_lf = logfmt_value
_MAX_LOGGED = 1024


# A name inside a value: what precedes `=` after the start, a `?`, `&`, `;` or `#`.
_NESTED_NAME = re.compile(r"(?:^|[?&;#])([^?&;#=]*)=")
_NESTED_ROUNDS = 4


@lru_cache(maxsize=1024)
def _is_sensitive_name(name: str) -> bool:
    return SENSITIVE_KEY.search(name) is not None


@lru_cache(maxsize=1024)
def _is_sensitive(raw_key: str) -> bool:
    return _is_sensitive_name(unquote_plus(raw_key))


def _hides_secret(value: str) -> bool:
    """Whether `value` (e.g. a redirect URL) carries a sensitive `name=...` pair of its own."""
    for _ in range(_NESTED_ROUNDS):
        if "=" in value:
            if any(map(_is_sensitive_name, _NESTED_NAME.findall(value))):
                return True
        elif "%" not in value:
            return False
        decoded = unquote_plus(value)
        if decoded == value:
            return False
        value = decoded
    # Still encoded after several rounds: what it hides cannot be told cheaply, so mask it.
    return True


def mask_query(query_string: bytes) -> str:
    """The query string with values of sensitive-looking keys replaced by `***`.

    A value is also masked whole when it carries a sensitive pair of its own, such as
    `redirect=https%3A%2F%2Fapp%2Fcb%3Ftoken%3D...` (looked for through up to four rounds of
    percent-decoding; a value still encoded after that is masked). Keys and all other values are
    kept as sent (still percent-encoded); a key without `=` is kept. The result is capped at
    1024 characters.
    """
    if not query_string:
        return ""
    text = query_string[: _MAX_LOGGED * 4].decode("latin-1")
    # Decoding yields `=` only from `=`, `%3D` or `%25...` (a further round): other values, most
    # of them, cannot hold a pair and are not decoded at all.
    encoded = "%3" in text or "%25" in text
    parts = []
    for part in text.split("&"):
        key, sep, value = part.partition("=")
        if sep and (_is_sensitive(key) or ((encoded or "=" in value) and _hides_secret(value))):
            part = f"{key}={MASK}"
        parts.append(part)
    masked = "&".join(parts)
    return masked if len(masked) <= _MAX_LOGGED else masked[:_MAX_LOGGED] + "..."


class AccessLogger:
    """Builds and emits access log records; shared by `AccessLogMiddleware` and the full stack.

    Fields, in order: method, route (template), path, query (masked; only when present), status,
    duration_ms, request_id, client (host only). Request bodies and headers are never logged.
    The line is rendered as JSON or logfmt into the record's message; the same fields are also
    attached as `record.fields` for structured handlers. Records carry no source location: the
    caller lookup would cost more than the rest of the line.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        format: LogFormat = "json",
        level: int = logging.INFO,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self.level = level
        renderer(format)  # validates the name
        self._records = RecordTemplate(self.logger, level)
        self._json = format == "json"

    def enabled(self) -> bool:
        """Whether the logger would handle a record now (levels can change at run time)."""
        return self.logger.isEnabledFor(self.level)

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
        """Log one request; `path` and `query` are as received, before routing rewrote them."""
        method: str = scope["method"]
        if len(path) > _MAX_LOGGED:
            path = path[:_MAX_LOGGED] + "..."
        duration_ms = int(duration * 1_000_000.0 + 0.5) / 1000  # to the µs; cheaper than round()
        client_addr = scope.get("client")
        client: str | None = client_addr[0] if client_addr else None
        fields: dict[str, object] = {
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
            "client": client,
        }
        masked = None
        if query:
            masked = mask_query(query)
            fields = {"method": method, "route": route, "path": path, "query": masked, **fields}
        # Hand-rolled equivalents of render_json/render_logfmt(fields): this runs per request.
        if self._json:
            q = f',"query":{_encode(masked)}' if masked is not None else ""
            rid = _encode(request_id) if request_id is not None else "null"
            addr = _encode(client) if client is not None else "null"
            line = (
                f'{{"method":{_encode(method)},"route":{_encode(route)},"path":{_encode(path)}{q}'
                f',"status":{status},"duration_ms":{duration_ms!r},"request_id":{rid}'
                f',"client":{addr}}}'
            )
            # One check for the whole line rather than per value: the common line is all ASCII.
            if not line.isascii():
                line = escape_unsafe(line)
        else:
            q = f" query={_lf(masked)}" if masked is not None else ""
            line = (
                f"method={_lf(method)} route={_lf(route)} path={_lf(path)}{q} status={status}"
                f" duration_ms={duration_ms!r} request_id={_lf(request_id)} client={_lf(client)}"
            )
        self.logger.handle(self._records.make(line, {FIELDS_ATTR: fields}))


def make_access_logger(
    logger: logging.Logger | None = None,
    format: LogFormat = "json",
    level: int = logging.INFO,
    structlog: bool = False,
) -> AccessLogger:
    """An `AccessLogger`, or with `structlog` one emitting structlog events (on a logger of
    `logger`'s name; `format` is then structlog's business)."""
    if structlog:
        from core.observability.structlog_support import StructlogAccessLogger

        return StructlogAccessLogger(level, logger.name if logger is not None else ACCESS_LOGGER)
    return AccessLogger(logger, format, level)


class AccessLogMiddleware:
    """Pure ASGI middleware logging one line per HTTP request (see `AccessLogger` for fields).

    Duration runs until the final body chunk; a request whose app raised before completing its
    response is logged as 500. With `structlog`, lines are structlog events instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: logging.Logger | None = None,
        format: LogFormat = "json",
        level: int = logging.INFO,
        structlog: bool = False,
    ) -> None:
        self.app = app
        self.access = make_access_logger(logger, format, level, structlog)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; non-HTTP scopes pass straight through."""
        if scope["type"] != "http" or not self.access.enabled():
            await self.app(scope, receive, send)
            return
        # Read before the app runs: routers may rewrite the path in the shared scope.
        path = scope["path"]
        query = scope.get("query_string", b"")
        watch = ResponseWatch(send)
        start = perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            status, end = watch.finish()
            route = route_label(scope, status)
            self.access.emit(scope, route, path, query, status, end - start, get_request_id())
