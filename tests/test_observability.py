"""Observability middleware on real FastAPI and Litestar apps: one suite for both frameworks."""

from __future__ import annotations

import json
import logging
import random
import string
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from litestar.middleware import DefineMiddleware
from litestar.response import Stream
from prometheus_client.parser import text_string_to_metric_families

from core.config import ObservabilitySettings
from core.observability import (
    UNMATCHED,
    AccessLogMiddleware,
    Metrics,
    MetricsMiddleware,
    ObservabilityMiddleware,
    RequestIdLogFilter,
    RequestIdMiddleware,
    get_request_id,
    metrics_response,
    observability_middleware,
)

FRAMEWORKS = ["fastapi", "litestar"]
APP_LOGGER = "dctest.obs.app"
ACCESS = "dctest.obs.access"
HEX32 = set(string.hexdigits.lower())


# --- apps ------------------------------------------------------------------------------------


try:
    from litestar.params import FromPath
except ImportError:  # Litestar < 2.16 infers path parameters from the signature
    FromPath = Annotated  # type: ignore[misc,assignment]


def build_fastapi() -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.get("/items/{name}")
    async def item(name: str) -> dict[str, str]:
        raise HTTPException(404, "no such item")

    @app.post("/echo")
    async def echo() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/log")
    async def log() -> dict[str, str | None]:
        logging.getLogger(APP_LOGGER).warning("inside handler")
        return {"request_id": get_request_id()}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_chunks(), media_type="text/plain")

    return app


def build_litestar(middleware: list[Any] | None = None) -> Litestar:
    @get("/users/{user_id:int}")
    async def user(user_id: FromPath[int]) -> dict[str, int]:
        return {"id": user_id}

    @get("/items/{name:str}")
    async def item(name: FromPath[str]) -> None:
        raise NotFoundException("no such item")

    @post("/echo", status_code=200)
    async def echo() -> dict[str, str]:
        return {"ok": "yes"}

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @get("/log")
    async def log() -> dict[str, str | None]:
        logging.getLogger(APP_LOGGER).warning("inside handler")
        return {"request_id": get_request_id()}

    @get("/stream")
    async def stream() -> Stream:
        return Stream(_chunks(), media_type="text/plain")

    # logging_config=None: Litestar would otherwise reconfigure the process's logging.
    return Litestar(
        [user, item, echo, boom, log, stream], middleware=middleware, logging_config=None
    )


async def _chunks() -> AsyncIterator[bytes]:
    for i in range(3):
        await anyio.sleep(0.05)
        yield f"chunk{i}\n".encode()


def wrap_outermost(framework: str, app: Any, outer: Callable[[Any], Any]) -> Any:
    """The recommended adapter wiring: the stack wraps everything the framework does.

    FastAPI: around the built middleware stack (outside ServerErrorMiddleware, so custom 500
    handlers still answer). Litestar: around `asgi_handler` (outside the router, so unmatched
    paths are seen too).
    """
    if framework == "fastapi":
        build = app.build_middleware_stack
        app.build_middleware_stack = lambda: outer(build())
    else:
        app.asgi_handler = outer(app.asgi_handler)
    return app


BUILDERS = {"fastapi": build_fastapi, "litestar": build_litestar}


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in self.records]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    loggers = [logging.getLogger(ACCESS), logging.getLogger(APP_LOGGER)]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def stack(app: Any, settings: ObservabilitySettings, metrics: Metrics) -> Any:
    return ObservabilityMiddleware(
        app, settings=settings, metrics=metrics, access_logger=logging.getLogger(ACCESS)
    )


class Harness:
    """One framework app with the full stack, its metrics and a client."""

    def __init__(self, framework: str, settings: ObservabilitySettings | None = None) -> None:
        self.framework = framework
        self.settings = settings or ObservabilitySettings()
        self.metrics = Metrics()
        self.app = wrap_outermost(
            framework,
            BUILDERS[framework](),
            lambda inner: stack(inner, self.settings, self.metrics),
        )

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    def samples(self, name: str = "http_requests_total") -> list[Any]:
        body, _ = metrics_response(self.metrics)
        return [
            s
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == name
        ]

    def counts(self) -> dict[tuple[str, str, str], float]:
        return {
            (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
            for s in self.samples()
        }


@pytest.fixture(params=FRAMEWORKS)
def harness(request: pytest.FixtureRequest, captured: Captured) -> Harness:
    return Harness(request.param)


# --- direct ASGI calls -----------------------------------------------------------------------


def http_scope(
    path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }


async def call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one request through `app` and return the messages it sent."""
    sent: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(scope, receive, send)
    return sent


# --- the suite, for both frameworks ------------------------------------------------------------


@pytest.mark.anyio
async def test_path_parameter_gives_template_label(harness: Harness, captured: Captured) -> None:
    async with harness.client() as client:
        for user_id in (1, 42, 9999):
            assert (await client.get(f"/users/{user_id}")).status_code == 200
        assert (await client.get("/items/widget")).status_code == 404
    counts = harness.counts()
    assert counts == {
        ("GET", "/users/{user_id}", "200"): 3.0,
        ("GET", "/items/{name}", "404"): 1.0,  # a handler's 404 keeps its route
    }
    durations = [
        s for s in harness.samples("http_request_duration_seconds_count") if s.value == 3.0
    ]
    assert [s.labels for s in durations] == [{"method": "GET", "route": "/users/{user_id}"}]
    routes = [line["route"] for line in captured.lines()]
    assert routes == ["/users/{user_id}"] * 3 + ["/items/{name}"]


@pytest.mark.anyio
async def test_random_unmatched_paths_share_one_label(harness: Harness) -> None:
    rng = random.Random(6)
    alphabet = string.ascii_letters + string.digits + "-._~%"
    app = harness.app
    for _ in range(1000):
        segments = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3)]
        path = "/zz-" + "/".join(segments[: rng.randint(1, 3)])
        messages = await call(app, http_scope(path))
        assert messages[0]["status"] == 404
    routes = {s.labels["route"] for s in harness.samples()}
    assert routes == {UNMATCHED}
    assert harness.counts() == {("GET", UNMATCHED, "404"): 1000.0}
    buckets = {s.labels["route"] for s in harness.samples("http_request_duration_seconds_bucket")}
    assert buckets == {UNMATCHED}


@pytest.mark.anyio
async def test_unhandled_exception_gives_500_sample_and_request_id(
    harness: Harness, captured: Captured
) -> None:
    async with harness.client() as client:
        response = await client.get("/boom", headers={"X-Request-ID": "trace-boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-boom-1"
    assert harness.counts() == {("GET", "/boom", "500"): 1.0}
    [line] = captured.lines()
    assert line["status"] == 500
    assert line["request_id"] == "trace-boom-1"
    in_progress = harness.samples("http_requests_in_progress")
    assert [s.value for s in in_progress] == [0.0]


@pytest.mark.anyio
async def test_request_id_accepted_or_replaced(harness: Harness) -> None:
    cases = {
        "abc-123": True,
        "0f8fad5b-d9cb-469f-a165-70867728950e": True,
        "a" * 128: True,
        "a" * 129: False,
        "has space": False,
        'quote"d': False,
        "semi;colon": False,
        "": False,
    }
    async with harness.client() as client:
        for incoming, valid in cases.items():
            response = await client.get("/users/1", headers={"X-Request-ID": incoming})
            returned = response.headers.get_list("x-request-id")
            assert len(returned) == 1
            if valid:
                assert returned == [incoming]
            else:
                assert len(returned[0]) == 32
                assert set(returned[0]) <= HEX32
        first = (await client.get("/users/1")).headers["x-request-id"]
        second = (await client.get("/users/1")).headers["x-request-id"]
    assert first != second


@pytest.mark.anyio
async def test_request_id_reaches_handler_and_app_logs(
    harness: Harness, captured: Captured
) -> None:
    async with harness.client() as client:
        response = await client.get("/log", headers={"X-Request-ID": "req-log-7"})
    assert response.json() == {"request_id": "req-log-7"}
    app_records = [r for r in captured.records if r.name == APP_LOGGER]
    access_records = [r for r in captured.records if r.name == ACCESS]
    assert [r.request_id for r in app_records] == ["req-log-7"]  # type: ignore[attr-defined]
    assert [r.request_id for r in access_records] == ["req-log-7"]  # type: ignore[attr-defined]
    assert json.loads(access_records[0].getMessage())["request_id"] == "req-log-7"
    assert get_request_id() is None  # reset after the request


@pytest.mark.anyio
async def test_access_log_masks_secrets_and_skips_bodies_and_headers(
    harness: Harness, captured: Captured
) -> None:
    query = (
        "password=hunter2-canary&token=tok-canary&api_key=key-canary&X-Signature=sig-canary"
        "&client_secret=sec-canary&code=code-canary&page=3&q=widgets"
    )
    async with harness.client() as client:
        await client.post(
            f"/echo?{query}",
            content=b'{"card": "body-canary"}',
            headers={"Authorization": "Bearer auth-canary", "Cookie": "session=cookie-canary"},
        )
    [record] = [r for r in captured.records if r.name == ACCESS]
    text = record.getMessage()
    assert "canary" not in text
    assert "canary" not in repr(record.__dict__)
    line = json.loads(text)
    assert line["query"] == (
        "password=***&token=***&api_key=***&X-Signature=***&client_secret=***&code=***"
        "&page=3&q=widgets"
    )
    assert line["path"] == "/echo"
    assert line["route"] == "/echo"
    assert line["method"] == "POST"


@pytest.mark.anyio
async def test_streaming_measured_until_last_chunk(harness: Harness, captured: Captured) -> None:
    async with harness.client() as client:
        response = await client.get("/stream")
    assert response.text == "chunk0\nchunk1\nchunk2\n"
    [line] = captured.lines()
    assert line["route"] == "/stream"
    assert line["duration_ms"] >= 140
    [total] = [
        s
        for s in harness.samples("http_request_duration_seconds_sum")
        if s.labels["route"] == "/stream"
    ]
    assert total.value >= 0.14


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
async def test_lifespan_passes_through_framework_test_client(harness: Harness) -> None:
    # The frameworks' own test clients run the lifespan protocol through the wrapped app.
    if harness.framework == "fastapi":
        from fastapi.testclient import TestClient

        with TestClient(harness.app) as client:
            assert client.get("/users/5").json() == {"id": 5}
    else:
        from litestar.testing import AsyncTestClient

        async with AsyncTestClient(harness.app) as aclient:
            assert (await aclient.get("/users/5")).json() == {"id": 5}
    assert harness.counts() == {("GET", "/users/{user_id}", "200"): 1.0}


@pytest.mark.anyio
async def test_metrics_output_parses(harness: Harness) -> None:
    harness.metrics.cache("users").on_event("hit")
    harness.metrics.on_retry("db.connect")
    async with harness.client() as client:
        await client.get("/users/1")
    body, content_type = metrics_response(harness.metrics)
    assert content_type.startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {
        "http_requests",
        "http_request_duration_seconds",
        "http_requests_in_progress",
        "cache_events",
        "retries",
    } <= names


@pytest.mark.anyio
async def test_logfmt_format(captured: Captured, harness: Harness) -> None:
    h = Harness(harness.framework, ObservabilitySettings(log_format="logfmt"))
    async with h.client() as client:
        await client.get("/users/3?token=abc&x=1", headers={"X-Request-ID": "lf-1"})
    [record] = [r for r in captured.records if r.name == ACCESS]
    text = record.getMessage()
    assert text.startswith('method=GET route=/users/{user_id} path=/users/3 query="token=***&x=1" ')
    assert "status=200 duration_ms=" in text
    assert text.endswith(" request_id=lf-1 client=127.0.0.1")


@pytest.mark.anyio
async def test_disabled_parts_are_left_out(captured: Captured, harness: Harness) -> None:
    settings = ObservabilitySettings(access_log=False, metrics_enabled=False)
    h = Harness(harness.framework, settings)
    async with h.client() as client:
        response = await client.get("/users/3")
    assert "x-request-id" in response.headers
    assert captured.records == []
    assert h.counts() == {}


# --- both frameworks side by side --------------------------------------------------------------


@pytest.mark.anyio
async def test_same_requests_same_labels_and_fields(captured: Captured) -> None:
    requests = [
        ("GET", "/users/42?page=2&token=t0k"),
        ("GET", "/items/thing"),
        ("POST", "/echo"),
        ("GET", "/no/such/path"),
        ("DELETE", "/users/42"),
        ("GET", "/boom"),
    ]
    results: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    for framework in FRAMEWORKS:
        captured.records.clear()
        h = Harness(framework)
        async with h.client() as client:
            for method, url in requests:
                await client.request(method, url, headers={"X-Request-ID": f"same-{method}"})
        lines = [{k: v for k, v in line.items() if k != "duration_ms"} for line in captured.lines()]
        results[framework] = (h.counts(), lines)
    assert results["fastapi"] == results["litestar"]
    counts, lines = results["fastapi"]
    assert counts == {
        ("GET", "/users/{user_id}", "200"): 1.0,
        ("GET", "/items/{name}", "404"): 1.0,
        ("POST", "/echo", "200"): 1.0,
        ("GET", UNMATCHED, "404"): 1.0,
        ("DELETE", UNMATCHED, "405"): 1.0,
        ("GET", "/boom", "500"): 1.0,
    }
    assert lines[0] == {
        "method": "GET",
        "route": "/users/{user_id}",
        "path": "/users/42",
        "query": "page=2&token=***",
        "status": 200,
        "request_id": "same-GET",
        "client": "127.0.0.1",
    }
    assert [list(line) for line in lines][1] == [
        "method",
        "route",
        "path",
        "status",
        "request_id",
        "client",
    ]


# --- framework-native middleware lists ----------------------------------------------------------


def _native_list_app(framework: str, metrics: Metrics) -> Any:
    specs = observability_middleware(
        ObservabilitySettings(), metrics, access_logger=logging.getLogger(ACCESS)
    )
    if framework == "fastapi":
        app = build_fastapi()
        for cls, kwargs in reversed(specs):
            app.add_middleware(cls, **kwargs)
        return app
    return build_litestar([DefineMiddleware(cls, **kwargs) for cls, kwargs in specs])


@pytest.mark.anyio
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_native_middleware_lists(framework: str, captured: Captured) -> None:
    metrics = Metrics()
    app = _native_list_app(framework, metrics)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.get("/users/7", headers={"X-Request-ID": "native-1"})
        boom = await client.get("/boom")
    assert ok.headers["x-request-id"] == "native-1"
    assert len(boom.headers["x-request-id"]) == 32
    assert boom.status_code == 500
    body, _ = metrics_response(metrics)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    labels = {
        (s.labels["route"], s.labels["status"])
        for s in families["http_requests"].samples
        if s.name == "http_requests_total"
    }
    assert labels == {("/users/{user_id}", "200"), ("/boom", "500")}


# --- raw ASGI behaviour ---------------------------------------------------------------------


def full_stack(app: Any, metrics: Metrics) -> Any:
    return stack(app, ObservabilitySettings(), metrics)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "middleware",
    [
        lambda app: RequestIdMiddleware(app),
        lambda app: AccessLogMiddleware(app, logger=logging.getLogger(ACCESS)),
        lambda app: MetricsMiddleware(app),
        lambda app: full_stack(app, Metrics()),
    ],
    ids=["request_id", "access_log", "metrics", "stack"],
)
@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_non_http_scopes_pass_through_untouched(
    middleware: Callable[[Any], Any], scope_type: str, captured: Captured
) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {"type": f"{scope_type}.startup"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": scope_type, "asgi": {"version": "3.0"}, "path": "/ws", "headers": []}
    before = dict(scope)
    await middleware(inner)(scope, receive, send)
    [(s, r, snd)] = seen
    assert s is scope
    assert r is receive
    assert snd is send
    assert scope == before
    assert captured.records == []


@pytest.mark.anyio
async def test_exception_without_response_is_answered_500_and_reraised(
    captured: Captured,
) -> None:
    metrics = Metrics()

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("inner failure")

    with pytest.raises(ValueError, match="inner failure"):
        await call(full_stack(broken, metrics), http_scope("/x"))
    # The messages are gone with the exception; check what the middleware recorded instead.
    [line] = captured.lines()
    assert line["status"] == 500
    assert line["route"] == UNMATCHED

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(ValueError, match="inner failure"):
        await full_stack(broken, Metrics())(
            http_scope("/x", headers=[(b"x-request-id", b"given-9")]), receive, send
        )
    assert sent[0]["status"] == 500
    assert (b"x-request-id", b"given-9") in sent[0]["headers"]
    assert sent[1] == {
        "type": "http.response.body",
        "body": b"Internal Server Error",
        "more_body": False,
    }


@pytest.mark.anyio
async def test_exception_mid_stream_counts_as_500(captured: Captured) -> None:
    metrics = Metrics()

    async def half(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError):
        await call(full_stack(half, metrics), http_scope("/s"))
    assert [line["status"] for line in captured.lines()] == [500]
    body, _ = metrics_response(metrics)
    assert 'http_requests_total{method="GET",route="<unmatched>",status="500"} 1.0' in (
        body.decode()
    )


@pytest.mark.anyio
async def test_existing_request_id_header_not_duplicated() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"X-Request-ID", b"own")]}
        )
        await send({"type": "http.response.body", "body": b""})

    messages = await call(RequestIdMiddleware(app), http_scope())
    assert messages[0]["headers"] == [(b"X-Request-ID", b"own")]


@pytest.mark.anyio
async def test_custom_header_and_generator() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = RequestIdMiddleware(app, header="X-Correlation-Id", generator=lambda: "fixed-id")
    messages = await call(mw, http_scope())
    assert messages[0]["headers"] == [(b"x-correlation-id", b"fixed-id")]
    messages = await call(mw, http_scope(headers=[(b"x-correlation-id", b"from-client")]))
    assert messages[0]["headers"] == [(b"x-correlation-id", b"from-client")]
    with pytest.raises(ValueError, match="header"):
        RequestIdMiddleware(app, header="bad header")


@pytest.mark.anyio
async def test_access_log_skipped_when_logger_disabled(captured: Captured) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    logger = logging.getLogger(ACCESS)
    logger.setLevel(logging.WARNING)
    for mw in (AccessLogMiddleware(app, logger=logger), full_stack(app, Metrics())):
        messages = await call(mw, http_scope())
        assert messages[0]["status"] == 200
    assert captured.records == []
    logger.setLevel(logging.INFO)  # levels are read per request
    await call(full_stack(app, Metrics()), http_scope())
    assert len(captured.records) == 1
