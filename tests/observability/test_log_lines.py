"""Every access-log line is one line: no request text can split it or forge another line.

Readers split lines on more than `\\n`: `str.splitlines()` (and many log shippers) also break on
`\\r`, `\\x0b`, `\\x0c`, `\\x1c`-`\\x1e`, U+0085, U+2028 and U+2029. Lines go through the real
middleware and a real UTF-8 stream handler, then must parse back to the request's fields.
"""

from __future__ import annotations

import io
import json
import logging
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote_from_bytes, unquote

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ObservabilitySettings
from core.observability import (
    UNMATCHED,
    AccessLogMiddleware,
    ObservabilityMiddleware,
    StructuredFormatter,
    is_valid_request_id,
    mask_query,
    render_json,
    render_logfmt,
    reset_request_id,
    set_request_id,
)
from core.observability.formatting import json_string, logfmt_value

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
C1_CONTROLS = "".join(chr(c) for c in range(0x80, 0xA0))
# What a line must never hold raw: anything a reader may split on, C1 controls (terminals act
# on some, e.g. U+009B starts an escape sequence) and lone surrogates (not encodable as UTF-8).
FORBIDDEN = frozenset(LINE_BREAKS + C1_CONTROLS + "".join(chr(c) for c in range(0xD800, 0xE000)))
MAX_LOGGED = 1024

# Any code point, surrogates included, with the dangerous ones and logfmt's syntax made frequent.
CHARS = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.sampled_from(LINE_BREAKS + C1_CONTROLS + '"\\= \t\x00\x1b\x7f\ud800\udfff'),
)
TEXT = st.text(CHARS, max_size=40)
# Paths as servers hand them over: decoded text, or raw target bytes percent-decoded as UTF-8
# (what uvicorn and hypercorn do) or decoded with surrogateescape.
RAW = st.lists(
    st.one_of(
        st.binary(max_size=6),
        st.sampled_from(
            [b"\x85", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\r\n", b"%0A", b"%C2%85"]
        ),
        st.sampled_from([b"=", b"&", b" ", b'"', b"token=", b"\\", b"\xff"]),
    ),
    max_size=12,
).map(b"".join)
PATHS = st.one_of(
    TEXT,
    st.text(CHARS, min_size=MAX_LOGGED - 5, max_size=MAX_LOGGED + 5),
    RAW.map(lambda raw: unquote(quote_from_bytes(raw))),
    RAW.map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
FORMATS = st.sampled_from(["json", "logfmt"])
STRUCTURED = st.booleans()  # render through StructuredFormatter instead of the record's message


def test_line_breaks_are_all_that_splitlines_splits_on() -> None:
    splitting = {chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1}
    assert splitting == set(LINE_BREAKS)


def parse_logfmt(line: str) -> dict[str, str]:
    """Strict logfmt: `key=value` pairs split by one space; a value is bare or a JSON string."""
    out: dict[str, str] = {}
    decoder = json.JSONDecoder()
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        assert key.isidentifier(), (key, line)
        assert key not in out, (key, line)
        if line.startswith('"', eq + 1):
            value, end = decoder.raw_decode(line, eq + 1)
        else:
            end = line.find(" ", eq + 1)
            end = len(line) if end < 0 else end
            value = line[eq + 1 : end]
            assert '"' not in value and "=" not in value, (value, line)
        out[key] = value
        if end < len(line):
            assert line[end] == " ", line
            end += 1
            assert end < len(line), line
        i = end
    return out


def logfmt_text(value: object) -> str:
    """What a logfmt reader gets back for a field value (logfmt is untyped)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def assert_one_line(line: str) -> None:
    assert len(line.splitlines()) == 1, repr(line)
    bad = FORBIDDEN.intersection(line)
    assert not bad, (sorted(map(hex, map(ord, bad))), line)


def parse(line: str, log_format: str) -> dict[str, Any]:
    return json.loads(line) if log_format == "json" else parse_logfmt(line)


def expected_fields(
    route: str, path: str, query: bytes, request_id: str | None, log_format: str
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "method": "GET",
        "route": route or UNMATCHED,
        "path": path if len(path) <= MAX_LOGGED else path[:MAX_LOGGED] + "...",
    }
    if query:
        fields["query"] = mask_query(query)
    fields["status"] = 200
    fields["request_id"] = request_id
    fields["client"] = "127.0.0.1"
    if log_format == "logfmt":
        return {k: logfmt_text(v) for k, v in fields.items()}
    return fields


# --- encoders ----------------------------------------------------------------------------------


def test_json_string_escapes_every_forbidden_character() -> None:
    for char in sorted(FORBIDDEN):
        literal = json_string(f"a{char}b")
        assert_one_line(literal)
        assert literal.isascii(), literal
        assert json.loads(literal) == f"a{char}b"


@given(TEXT)
def test_json_string_and_logfmt_value_stay_on_one_line(text: str) -> None:
    for encoded in (json_string(text), logfmt_value(text)):
        assert_one_line(f"x{encoded}x")
    assert json.loads(json_string(text)) == text


@given(st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=6), st.one_of(st.none(), TEXT)))
def test_rendered_fields_stay_on_one_line_and_parse_back(fields: dict[str, str | None]) -> None:
    line = render_json(fields)
    assert_one_line("{}" + line)
    assert json.loads(line) == fields
    line = render_logfmt(fields)
    if fields:
        assert_one_line(line)
    assert parse_logfmt(line) == {k: logfmt_text(v) for k, v in fields.items()}


# --- through the middleware ---------------------------------------------------------------------

_LOGGER = logging.getLogger("dctest.log_lines")
_LOGGER.propagate = False
_LOGGER.setLevel(logging.INFO)


@contextmanager
def written_lines(formatter: logging.Formatter | None) -> Iterator[list[str]]:
    """The lines a UTF-8 stream handler on the test logger writes (filled on exit)."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
    handler = logging.StreamHandler(stream)
    handler.terminator = "\n"
    if formatter is not None:
        handler.setFormatter(formatter)
    # A line that cannot be written must fail the test, not be reported and dropped.
    handler.handleError = lambda record: pytest.fail("the handler could not write the line")  # type: ignore[method-assign]
    lines: list[str] = []
    _LOGGER.addHandler(handler)
    try:
        yield lines
    finally:
        _LOGGER.removeHandler(handler)
    stream.flush()
    text = raw.getvalue().decode("utf-8")
    assert text.endswith("\n")
    lines.extend(text[:-1].split("\n"))


def http_scope(path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": quote_from_bytes(path.encode("utf-8", "surrogatepass")).encode("ascii"),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def routed_app(route: str) -> Any:
    """A minimal ASGI app that reports `route` as its matched template, as Litestar does."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_template"] = route
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def serve(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, _receive, send)
    return sent


def check_line(
    lines: list[str], log_format: str, structured: bool, expected: dict[str, Any]
) -> None:
    [line] = lines
    assert_one_line(line)
    fields = parse(line, log_format)
    if structured:
        assert fields.pop("logger") == _LOGGER.name
        assert fields.pop("level") == "INFO"
        del fields["ts"]
    duration = fields.pop("duration_ms")
    assert float(duration) >= 0
    assert fields == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    log_format=FORMATS,
    structured=STRUCTURED,
    route=TEXT,
    path=PATHS,
    query=RAW,
    request_id=st.one_of(st.none(), TEXT),
)
def test_access_log_middleware_writes_one_line_that_parses_back(
    log_format: str,
    structured: bool,
    route: str,
    path: str,
    query: bytes,
    request_id: str | None,
) -> None:
    inner = AccessLogMiddleware(routed_app(route), logger=_LOGGER, format=log_format)  # type: ignore[arg-type]

    # Ids set by the service's own code (e.g. an outer middleware of its own) are logged as is.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        token = set_request_id(request_id)
        try:
            await inner(scope, receive, send)
        finally:
            reset_request_id(token)

    formatter = StructuredFormatter(log_format) if structured else None  # type: ignore[arg-type]
    with written_lines(formatter) as lines:
        serve(app, http_scope(path, query, []))
    expected = expected_fields(route, path, query, request_id, log_format)
    check_line(lines, log_format, structured, expected)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    log_format=FORMATS,
    structured=STRUCTURED,
    route=TEXT,
    path=PATHS,
    query=RAW,
    incoming_id=st.one_of(RAW, st.text(string.hexdigits + "-", min_size=1).map(str.encode)),
)
def test_observability_stack_writes_one_line_that_parses_back(
    log_format: str,
    structured: bool,
    route: str,
    path: str,
    query: bytes,
    incoming_id: bytes,
) -> None:
    observability = ObservabilitySettings(log_format=log_format, metrics_enabled=False)
    app = ObservabilityMiddleware(routed_app(route), settings=observability, access_logger=_LOGGER)
    formatter = StructuredFormatter(log_format) if structured else None  # type: ignore[arg-type]
    with written_lines(formatter) as lines:
        sent = serve(app, http_scope(path, query, [(b"x-request-id", incoming_id)]))
    echoed = dict(sent[0]["headers"])[b"x-request-id"].decode("ascii")
    if is_valid_request_id(incoming_id):
        assert echoed == incoming_id.decode("ascii")
    expected = expected_fields(route, path, query, echoed, log_format)
    check_line(lines, log_format, structured, expected)
