"""Observability building blocks: validators, masking, rendering, metrics objects, tracing."""

from __future__ import annotations

import json
import logging
import os
import re
import string
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from enum import Enum
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from core.config import ObservabilitySettings
from core.observability import (
    AccessLogger,
    AccessLogMiddleware,
    Metrics,
    MetricsMiddleware,
    RequestIdLogFilter,
    RequestIdMiddleware,
    StructuredFormatter,
    TracingMiddleware,
    get_request_id,
    is_valid_request_id,
    mask_query,
    metrics_response,
    new_request_id,
    observability_middleware,
    render_json,
    render_logfmt,
    reset_request_id,
    set_request_id,
)
from core.observability.access_log import SENSITIVE_KEY
from core.observability.formatting import FIELDS_ATTR

ID_CHARS = string.ascii_letters + string.digits + "._:-"


# --- request ids ------------------------------------------------------------------------------


@given(st.text(max_size=200))
def test_request_id_validator_matches_documented_rule(value: str) -> None:
    expected = 1 <= len(value) <= 128 and all(c in ID_CHARS for c in value)
    assert is_valid_request_id(value) is expected
    if value.isascii():
        assert is_valid_request_id(value.encode("ascii")) is expected


@given(st.text(alphabet=ID_CHARS, min_size=1, max_size=128))
def test_request_id_validator_accepts_all_well_formed(value: str) -> None:
    assert is_valid_request_id(value)


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_request_id(i) and len(i) == 32 for i in ids)


def test_threads_never_share_a_generated_id() -> None:
    # Ids come in batches of 256; 8 threads x 2,000 ids cross many refills at once.
    per_thread = 2000
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_request_id() for _ in range(per_thread)], range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 8 * per_thread


def test_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_request_id()  # the parent now holds a batch of ids it has not handed out
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a threaded process
        pid = os.fork()
    if pid == 0:  # child: report one id and leave without running any cleanup
        os.write(write, new_request_id().encode("ascii"))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_id = pipe.read().decode("ascii")
    os.waitpid(pid, 0)
    assert is_valid_request_id(child_id)
    assert child_id != new_request_id()


def test_set_request_id_is_current_until_reset() -> None:
    assert get_request_id() is None
    token = set_request_id("job-7")
    try:
        assert get_request_id() == "job-7"
    finally:
        reset_request_id(token)
    assert get_request_id() is None


async def _id_roundtrip(incoming: bytes | None) -> tuple[list[bytes], str | None]:
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        from core.observability import get_request_id

        seen.append(get_request_id())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    headers = [(b"x-request-id", incoming)] if incoming is not None else []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await RequestIdMiddleware(app)(scope, receive, send)
    values = [v for k, v in sent[0]["headers"] if k == b"x-request-id"]
    return values, seen[0]


@settings(max_examples=200)
@given(
    st.one_of(st.none(), st.binary(max_size=160), st.text(ID_CHARS, max_size=140).map(str.encode))
)
def test_middleware_accepts_or_replaces_incoming_id(incoming: bytes | None) -> None:
    values, seen = anyio.run(_id_roundtrip, incoming)
    assert len(values) == 1
    [value] = values
    assert seen == value.decode()
    if incoming is not None and re.fullmatch(rb"[A-Za-z0-9._:\-]{1,128}", incoming):
        assert value == incoming
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", value)


def test_log_filter_sets_request_id_and_keeps_explicit_one() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    assert RequestIdLogFilter().filter(record)
    assert record.request_id is None  # type: ignore[attr-defined]
    record.request_id = "explicit"  # type: ignore[attr-defined]
    RequestIdLogFilter().filter(record)
    assert record.request_id == "explicit"  # type: ignore[attr-defined]


# --- query masking ------------------------------------------------------------------------------

SENSITIVE = [
    "password",
    "token",
    "access_token",
    "api_key",
    "apiKey",
    "secret",
    "Authorization",
    "signature",
    "X-Amz-Signature",
    "code",
    "session_id",
    "key",
    "jwt",
    "otp",
    "passwd",
    "sid",
    "bearer",
    "hmac",
    "HMAC",
    "Bearer",
    "SID",
]
PLAIN = ["page", "q", "limit", "sort", "offset", "name", "lang"]
# Fragments every key containing them must be masked for, in any case.
SECRET_WORDS = [
    "sid",
    "bearer",
    "hmac",
    "signature",
    "code",
    "token",
    "password",
    "secret",
    "session",
    "key",
    "auth",
]


@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(SENSITIVE), st.sampled_from(PLAIN)),
            # Values holding `name=value` pairs of their own are the nested tests' subject.
            st.text(st.characters(codec="utf-8", exclude_characters="="), min_size=1, max_size=20),
        ),
        max_size=8,
    )
)
def test_mask_query_hides_every_sensitive_value(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote_plus(k)}={quote_plus(f'V{i}x{v}')}" for i, (k, v) in enumerate(pairs))
    masked = mask_query(query.encode())
    out = masked.split("&") if masked else []
    assert len(out) == len(pairs)
    for i, ((key, value), part) in enumerate(zip(pairs, out, strict=True)):
        encoded = quote_plus(f"V{i}x{value}")
        if key in SENSITIVE:
            assert part == f"{quote_plus(key)}=***"
        else:
            assert part == f"{quote_plus(key)}={encoded}"


def test_mask_query_edge_cases() -> None:
    assert mask_query(b"") == ""
    assert mask_query(b"flag&token=x&=y&a=b=c") == "flag&token=***&=y&a=b=c"
    assert mask_query(b"pass%77ord=x") == "pass%77ord=***"  # decoded before matching
    assert mask_query(b"q=\xff") == "q=\xff"
    assert len(mask_query(b"q=" + b"a" * 5000)) == 1027


def _spell(c: str, form: str) -> str:
    return c if form == "plain" else form.format(ord(c))


@st.composite
def raw_secret_keys(draw: st.DrawFn) -> str:
    """A raw query key containing a secret word: any case, any affix, characters %-escaped."""
    word = draw(st.sampled_from(SECRET_WORDS))
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in word)
    key = draw(st.sampled_from(["", "x_", "oauth_", "X-", "my", "Amz-"])) + cased
    key += draw(st.sampled_from(["", "_id", "Value", "-2", "[]", ".v1"]))
    forms = st.sampled_from(["plain", "plain", "%{:02X}", "%{:02x}"])
    return "".join(_spell(c, draw(forms)) for c in key)


SECRETS = st.text(string.ascii_letters + string.digits, min_size=6, max_size=12).map(
    "S3CR3T".__add__
)


def _decodings(text: str) -> list[str]:
    out = [text]
    for _ in range(4):
        out.append(unquote_plus(out[-1]))
    return out


@given(raw_secret_keys(), SECRETS, st.sampled_from(PLAIN))
def test_mask_query_hides_secret_keys_in_any_spelling(key: str, secret: str, plain: str) -> None:
    masked = mask_query(f"{plain}=1&{key}={secret}&{plain}=2".encode())
    assert masked == f"{plain}=1&{key}=***&{plain}=2"


@given(
    outer=st.sampled_from(["redirect", "next", "return_to", "url", "continue"]),
    inner=raw_secret_keys(),
    secret=SECRETS,
    separator=st.sampled_from(["?", "?a=1&", "#", "?a=1;", "#state=x&"]),
    rounds=st.integers(0, 3),
    plus=st.booleans(),
)
def test_mask_query_hides_secrets_in_nested_urls(
    outer: str, inner: str, secret: str, separator: str, rounds: int, plus: bool
) -> None:
    value = f"https://app.example/cb{separator}{inner}={secret}"
    for _ in range(rounds):
        value = quote_plus(value, safe="") if plus else quote(value, safe="")
    masked = mask_query(f"page=2&{outer}={value}&lang=en".encode())
    assert not any(secret in text for text in _decodings(masked))
    if rounds or "&" not in separator:  # else the raw `&` makes the inner pair a query pair
        assert masked == f"page=2&{outer}=***&lang=en"


def _reference_mask(value: str) -> bool:
    """Whether any of four decoding rounds of `value` shows a sensitive pair, or it is deeper."""
    for _ in range(4):
        names = re.findall(r"(?:^|[?&;#])([^?&;#=]*)=", value)
        if any(SENSITIVE_KEY.search(name) for name in names):
            return True
        if unquote_plus(value) == value:
            return False
        value = unquote_plus(value)
    return True


# Value fragments from which every decoding path to a `name=` pair can be assembled.
ENCODING_PIECES = ["token", "sId", "x", "=", "%", "2", "3", "5", "D", "d", "%33", "%44", "%32"]
ENCODING_PIECES += ["%3D", "%3d", "%253D", "%25", "%2", "?", "%3F", "&", "#", ";", "+"]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(ENCODING_PIECES), max_size=12))
def test_mask_query_inspects_every_value_that_can_decode_to_a_pair(pieces: list[str]) -> None:
    value = "".join(pieces)
    # The cheap checks that skip most values must never skip one the full inspection masks.
    query = f"q={value.replace('&', '%26')}"
    assert (mask_query(query.encode()) == "q=***") == _reference_mask(query[2:])


def test_mask_query_keeps_nested_urls_without_secrets() -> None:
    kept = [
        b"next=%2Fhome%3Ftab%3D1",
        b"redirect=https%3A%2F%2Fmonkey.example%2Fcb%3Fpage%3D2",  # only names are matched
        b"q=a%3Db",
        b"discount=100%25",
        b"q=%25%25%25",
    ]
    for query in kept:
        assert mask_query(query) == query.decode()


def test_mask_query_masks_values_encoded_too_deep_to_inspect() -> None:
    value = "https://app.example/cb?page=1"
    for _ in range(6):
        value = quote(value, safe="")
    assert mask_query(f"next={value}".encode()) == "next=***"


# --- rendering ----------------------------------------------------------------------------------

KEYS = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)


@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_render_json_round_trips_on_one_line(fields: dict[str, Any]) -> None:
    line = render_json(fields)
    assert "\n" not in line
    assert json.loads(line) == fields


def _parse_logfmt(line: str) -> dict[str, str]:
    out = {}
    decoder = json.JSONDecoder()
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        if eq + 1 < len(line) and line[eq + 1] == '"':
            value, end = decoder.raw_decode(line, eq + 1)
        else:
            end = line.find(" ", eq + 1)
            end = len(line) if end < 0 else end
            value = line[eq + 1 : end]
        out[key] = value
        i = end + 1
    return out


@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_render_logfmt_parses_back(fields: dict[str, Any]) -> None:
    line = render_logfmt(fields)
    assert "\n" not in line
    expected = {
        k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in fields.items()
    }
    assert _parse_logfmt(line) == expected


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_ACCESS_TEST = logging.getLogger("dctest.obs.units.access")
_ACCESS_TEST.propagate = False
_ACCESS_TEST.setLevel(logging.INFO)


@settings(max_examples=150)
@given(
    fmt=st.sampled_from(["json", "logfmt"]),
    method=st.text(min_size=1, max_size=10),
    route=st.text(max_size=30),
    path=st.text(max_size=1100),
    query=st.binary(max_size=60),
    status=st.integers(100, 599),
    duration=st.floats(0, 100),
    request_id=st.one_of(st.none(), st.text(max_size=40)),
    client=st.one_of(st.none(), st.tuples(st.text(max_size=20), st.integers(0, 65535))),
)
def test_access_line_equals_generic_rendering(
    fmt: Any,
    method: str,
    route: str,
    path: str,
    query: bytes,
    status: int,
    duration: float,
    request_id: str | None,
    client: tuple[str, int] | None,
) -> None:
    handler = _Keep()
    _ACCESS_TEST.addHandler(handler)
    try:
        scope = {"type": "http", "method": method, "client": client}
        AccessLogger(_ACCESS_TEST, fmt).emit(
            scope, route, path, query, status, duration, request_id
        )
    finally:
        _ACCESS_TEST.removeHandler(handler)
    [record] = handler.records
    fields = getattr(record, FIELDS_ATTR)
    assert list(fields) == [
        "method",
        "route",
        "path",
        *(["query"] if query else []),
        "status",
        "duration_ms",
        "request_id",
        "client",
    ]
    render = render_json if fmt == "json" else render_logfmt
    assert record.getMessage() == render(fields)
    assert "\n" not in record.getMessage()
    if fmt == "json":
        assert json.loads(record.getMessage()) == fields


def test_structured_formatter_json_and_logfmt() -> None:
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    record.request_id = "r-1"  # type: ignore[attr-defined]
    line = json.loads(StructuredFormatter("json").format(record))
    assert line["level"] == "WARNING"
    assert line["logger"] == "app"
    assert line["message"] == "hello you"
    assert line["request_id"] == "r-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])

    access = logging.LogRecord("acc", logging.INFO, __file__, 1, "{...}", None, None)
    setattr(access, FIELDS_ATTR, {"method": "GET", "status": 200})
    text = StructuredFormatter("logfmt").format(access)
    assert text.endswith("level=INFO logger=acc method=GET status=200")

    try:
        raise ValueError("bad")
    except ValueError:
        failing = logging.LogRecord("a", logging.ERROR, __file__, 1, "x", None, sys.exc_info())
    assert "ValueError: bad" in json.loads(StructuredFormatter().format(failing))["exc_info"]
    with pytest.raises(ValueError, match="log format"):
        StructuredFormatter("xml")  # type: ignore[arg-type]


# --- metrics objects -------------------------------------------------------------------------


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics_response(metrics)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class FakeBreaker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = BreakerState.CLOSED


def test_breaker_state_gauge_follows_state_at_scrape_time() -> None:
    metrics = Metrics()
    redis, db = FakeBreaker("redis"), FakeBreaker("db")
    metrics.watch_breaker(redis, db)
    redis.state = BreakerState.OPEN
    samples = _samples(metrics)

    def state(name: str, value: str) -> float:
        return samples[("circuit_breaker_state", (("name", name), ("state", value)))]

    assert [state("redis", s) for s in ("closed", "open", "half_open")] == [0.0, 1.0, 0.0]
    assert [state("db", s) for s in ("closed", "open", "half_open")] == [1.0, 0.0, 0.0]
    db.state = BreakerState.HALF_OPEN
    samples = _samples(metrics)
    assert state("db", "half_open") == 1.0


def test_cache_events_and_retries() -> None:
    metrics = Metrics()
    hook = metrics.cache("users")
    for event in ["hits", "hits", "misses", "errors", "decode_failures", "weird", "hit"]:
        hook(event, 1.0)
    hook("loader_calls", 0.2)
    metrics.cache("sessions").on_event("miss")
    metrics.on_retry("db.connect")
    on_retry = metrics.retry_hook("db.connect")
    on_retry(1, ConnectionError("refused"), 0.05)
    samples = _samples(metrics)

    def events(cache: str, event: str) -> float:
        return samples[("cache_events_total", (("cache", cache), ("event", event)))]

    assert events("users", "hits") == 3.0
    assert events("users", "decode_failures") == 1.0
    assert events("users", "loader_calls") == 1.0
    assert events("users", "other") == 1.0
    assert events("sessions", "misses") == 1.0
    assert samples[("cache_loader_duration_seconds_sum", (("cache", "users"),))] == 0.2
    assert samples[("retries_total", (("operation", "db.connect"),))] == 2.0


def test_metrics_objects_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.on_retry("x")
    assert ("retries_total", (("operation", "x"),)) not in _samples(second)
    shared = CollectorRegistry()
    Metrics(shared)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(shared)
    prefixed = Metrics(namespace="svc")
    prefixed.on_retry("y")
    assert ("svc_retries_total", (("operation", "y"),)) in _samples(prefixed)


def test_multiprocess_exposition_aggregates_workers(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import sys
        from core.observability import Metrics, metrics_response
        m = Metrics()
        m.on_retry("job")
        m.http.started()
        m.http.finished("GET", "/job", 200, 0.2)
        if sys.argv[1] == "scrape":
            print(metrics_response(m)[0].decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script, "work"], env=env, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", script, "scrape"],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = [s for f in text_string_to_metric_families(out) for s in f.samples]
    values = {s.name: s.value for s in samples if s.labels.get("operation") == "job"}
    assert values["retries_total"] == 2.0  # one from each process
    http = {
        s.name: s.value
        for s in samples
        if s.labels.get("route") == "/job" and s.labels.get("le") in (None, "0.25")
    }
    assert http["http_requests_total"] == 2.0
    assert http["http_request_duration_seconds_bucket"] == 2.0
    assert http["http_request_duration_seconds_sum"] == pytest.approx(0.4)


# --- stack composition ----------------------------------------------------------------------


def test_observability_middleware_order_and_switches() -> None:
    metrics = Metrics()
    specs = observability_middleware(ObservabilitySettings(request_id_header="X-Trace"), metrics)
    assert [cls for cls, _ in specs] == [
        RequestIdMiddleware,
        AccessLogMiddleware,
        MetricsMiddleware,
    ]
    assert specs[0][1] == {"header": "X-Trace"}
    assert specs[2][1] == {"metrics": metrics}
    tracing = observability_middleware(ObservabilitySettings(tracing=True), metrics)
    assert [cls for cls, _ in tracing][:2] == [RequestIdMiddleware, TracingMiddleware]
    bare = observability_middleware(ObservabilitySettings(access_log=False, metrics_enabled=False))
    assert [cls for cls, _ in bare] == [RequestIdMiddleware]
    with pytest.raises(ValueError, match="Metrics"):
        observability_middleware(ObservabilitySettings())


# --- tracing (with a recording tracer; the OpenTelemetry SDK is not a dependency) -----------------


class RecordedSpan:
    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.kwargs = kwargs
        self.attributes: dict[str, Any] = dict(kwargs.get("attributes") or {})
        self.status: Any = None

    def update_name(self, name: str) -> None:
        self.name = name

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Any) -> None:
        self.status = status


class RecordingTracer:
    def __init__(self) -> None:
        self.spans: list[RecordedSpan] = []

    @contextmanager
    def start_as_current_span(self, name: str, **kwargs: Any) -> Iterator[RecordedSpan]:
        span = RecordedSpan(name, kwargs)
        self.spans.append(span)
        yield span


@pytest.mark.anyio
async def test_tracing_span_names_route_and_continues_trace() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, StatusCode

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_template"] = "/users/{user_id}"
        status = 503 if scope["path"] == "/down" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    tracer = RecordingTracer()
    middleware = TracingMiddleware(app, tracer=tracer)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = [(b"traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode())]

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    for path in ("/users/1", "/down"):
        scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
        await middleware(scope, receive, send)
    ok, down = tracer.spans
    assert ok.name == "GET /users/{user_id}"
    assert ok.kwargs["kind"] is SpanKind.SERVER
    assert ok.attributes == {
        "http.request.method": "GET",
        "url.path": "/users/1",
        "http.route": "/users/{user_id}",
        "http.response.status_code": 200,
    }
    assert ok.status is None
    parent = trace.get_current_span(ok.kwargs["context"]).get_span_context()
    assert f"{parent.trace_id:032x}" == trace_id
    assert down.status.status_code is StatusCode.ERROR
