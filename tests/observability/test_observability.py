"""Observability on real FastAPI and Litestar apps wired by the adapters: one suite for both.

Apps are built with `install(app, core)` / `CorePlugin(core)` and their lifespan is run, so the
tests see exactly the middleware, routes and metrics a service gets. Every framework is checked
against the same expected labels and log lines, so sessions with one framework installed still
prove that both answer alike.
"""

from __future__ import annotations

import json
import logging
import random
import string
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.config import ObservabilitySettings, Settings
from core.observability import (
    ACCESS_LOGGER,
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
from core.runtime import Core
from core.testing import asgi_lifespan
from tests.support.frameworks import FRAMEWORKS
from tests.support.logs import attached
from tests.support.observability_apps import APP_LOGGER, build_app, build_native_app

ACCESS = ACCESS_LOGGER
HEX32 = set(string.hexdigits.lower())


# --- harness -----------------------------------------------------------------------------------


class Captured(logging.Handler):
    """Collects access-log and app records, with the request id filter applied."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def access(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == ACCESS]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in self.access()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    with attached(handler, ACCESS, APP_LOGGER):
        yield handler


def make_settings(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    database: dict[str, Any] | None = None,
    **observability: Any,
) -> Settings:
    return Settings(
        app={"name": f"dcobs-{uuid.uuid4().hex[:8]}", "environment": "development"},
        database={"url": database_url, "pool_size": 2, "max_overflow": 0, **(database or {})},
        redis={"url": redis_url, "key_prefix": key_prefix},
        observability=observability,
    )


def make_core(settings: Settings, **kwargs: Any) -> Core:
    return Core(settings, **kwargs)


class Harness:
    """One framework's app wired by its adapter around a core, plus metric readers."""

    def __init__(self, framework: str, core: Core, app: Any = None) -> None:
        self.framework = framework
        self.core = core
        self.app = app if app is not None else build_app(framework, core)

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics

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


Start = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(framework: str, database_url: str, redis_url: str, key_prefix: str) -> Start:
    """`async with start(**observability_settings) as h:` runs the adapter-wired app's lifespan."""

    @asynccontextmanager
    async def running(**observability: Any) -> AsyncIterator[Harness]:
        settings = make_settings(database_url, redis_url, key_prefix, **observability)
        harness = Harness(framework, make_core(settings))
        async with asgi_lifespan(harness.app, phase_timeout=30):
            yield harness

    return running


@pytest.fixture
async def harness(start: Start, captured: Captured) -> AsyncIterator[Harness]:
    async with start() as h:
        yield h


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


# --- the suite, for every installed framework ------------------------------------------------


@pytest.mark.anyio
async def test_path_parameter_gives_template_label(harness: Harness, captured: Captured) -> None:
    order = uuid.uuid4()
    async with harness.client() as client:
        for user_id in (1, 42, 9999):
            assert (await client.get(f"/users/{user_id}")).status_code == 200
        assert (await client.get(f"/orders/{order}")).json() == {"id": str(order)}
        assert (await client.get("/items/widget")).status_code == 404
    counts = harness.counts()
    assert counts == {
        ("GET", "/users/{user_id}", "200"): 3.0,
        ("GET", "/orders/{order_id}", "200"): 1.0,  # converters never reach the label
        ("GET", "/items/{name}", "404"): 1.0,  # a handler's 404 keeps its route
    }
    durations = [
        s for s in harness.samples("http_request_duration_seconds_count") if s.value == 3.0
    ]
    assert [s.labels for s in durations] == [{"method": "GET", "route": "/users/{user_id}"}]
    routes = [line["route"] for line in captured.lines()]
    assert routes == ["/users/{user_id}"] * 3 + ["/orders/{order_id}", "/items/{name}"]


@pytest.mark.anyio
async def test_random_unmatched_paths_share_one_label(harness: Harness) -> None:
    rng = random.Random(6)
    alphabet = string.ascii_letters + string.digits + "-._~%"
    for _ in range(1000):
        segments = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3)]
        path = "/zz-" + "/".join(segments[: rng.randint(1, 3)])
        messages = await call(harness.app, http_scope(path))
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
        generated = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-boom-1"
    assert generated.status_code == 500
    assert set(generated.headers["x-request-id"]) <= HEX32
    assert harness.counts() == {("GET", "/boom", "500"): 2.0}
    lines = captured.lines()
    assert [line["status"] for line in lines] == [500, 500]
    assert [line["request_id"] for line in lines] == [
        "trace-boom-1",
        generated.headers["x-request-id"],
    ]
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
        # The adapters' own routes get an id too.
        assert len((await client.get("/health/live")).headers["x-request-id"]) == 32
    assert first != second


@pytest.mark.anyio
async def test_request_id_reaches_handler_and_app_logs(
    harness: Harness, captured: Captured
) -> None:
    async with harness.client() as client:
        response = await client.get("/log", headers={"X-Request-ID": "req-log-7"})
    assert response.json() == {"request_id": "req-log-7"}
    assert response.headers["x-request-id"] == "req-log-7"
    app_records = [r for r in captured.records if r.name == APP_LOGGER]
    access_records = captured.access()
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
    [record] = captured.access()
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
async def test_framework_test_client_runs_the_wired_app(
    framework: str, database_url: str, redis_url: str, key_prefix: str, captured: Captured
) -> None:
    # The frameworks' own test clients run the lifespan (the core, and with Litestar the
    # middleware wiring) through the adapter-wired app.
    h = Harness(framework, make_core(make_settings(database_url, redis_url, key_prefix)))
    if framework == "fastapi":
        from fastapi.testclient import TestClient

        with TestClient(h.app) as client:
            response = client.get("/users/5")
            ready = client.get("/health/ready")
    else:
        from litestar.testing import AsyncTestClient

        async with AsyncTestClient(h.app) as aclient:
            response = await aclient.get("/users/5")
            ready = await aclient.get("/health/ready")
    assert response.json() == {"id": 5}
    assert len(response.headers["x-request-id"]) == 32
    assert ready.status_code == 200, ready.text
    assert h.counts() == {
        ("GET", "/users/{user_id}", "200"): 1.0,
        ("GET", "/health/ready", "200"): 1.0,
    }
    assert [line["route"] for line in captured.lines()] == ["/users/{user_id}", "/health/ready"]


def _families(body: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body)}


@pytest.mark.anyio
async def test_metrics_route_output_parses_with_pool_and_breaker_gauges(harness: Harness) -> None:
    harness.metrics.on_retry("db.connect")
    async with harness.client() as client:
        await client.get("/users/1")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = _families(response.text)
    assert {
        "http_requests",
        "http_request_duration_seconds",
        "http_requests_in_progress",
        "cache_events",
        "cache_loader_duration_seconds",
        "retries",
        "db_pool_size",
        "db_pool_checked_out",
        "db_pool_checked_in",
        "db_pool_overflow",
        "circuit_breaker_state",
    } <= set(families)
    # The scrape itself is in progress while the body is rendered.
    assert [s.value for s in families["http_requests_in_progress"].samples] == [1.0]
    pools = {s.labels["pool"]: s.value for s in families["db_pool_size"].samples}
    assert pools == {"primary": 2.0, "read": 2.0}
    breakers = {
        (s.labels["name"], s.labels["state"]): s.value
        for s in families["circuit_breaker_state"].samples
    }
    assert breakers == {
        (name, state): 1.0 if state == "closed" else 0.0
        for name in ("database", "redis")
        for state in ("closed", "open", "half_open")
    }
    retries = {s.labels["operation"]: s.value for s in families["retries"].samples}
    assert retries["db.connect"] == 1.0
    requests = {
        (s.labels["route"], s.labels["status"])
        for s in families["http_requests"].samples
        if s.name == "http_requests_total"
    }
    assert requests == {("/users/{user_id}", "200")}  # the scrape is counted once it ends
    assert harness.counts()[("GET", "/metrics", "200")] == 1.0


@pytest.mark.anyio
async def test_logfmt_format(start: Start, captured: Captured) -> None:
    async with start(log_format="logfmt") as h, h.client() as client:
        await client.get("/users/3?token=abc&x=1", headers={"X-Request-ID": "lf-1"})
    [record] = captured.access()
    text = record.getMessage()
    assert text.startswith('method=GET route=/users/{user_id} path=/users/3 query="token=***&x=1" ')
    assert "status=200 duration_ms=" in text
    assert text.endswith(" request_id=lf-1 client=127.0.0.1")


@pytest.mark.anyio
async def test_disabled_parts_are_left_out(start: Start, captured: Captured) -> None:
    async with start(access_log=False, metrics_enabled=False) as h, h.client() as client:
        response = await client.get("/users/3")
        scrape = await client.get("/metrics")
    assert "x-request-id" in response.headers
    assert scrape.status_code == 404
    assert captured.records == []
    assert h.counts() == {}
    assert h.samples("db_pool_size") == []


# The same requests, with what every framework must log and count for them.
SAME_REQUESTS = [
    ("GET", "/users/42?page=2&token=t0k"),
    ("GET", "/items/thing"),
    ("POST", "/echo"),
    ("GET", "/no/such/path"),
    ("DELETE", "/users/42"),
    ("GET", "/boom"),
]
SAME_COUNTS = {
    ("GET", "/users/{user_id}", "200"): 1.0,
    ("GET", "/items/{name}", "404"): 1.0,
    ("POST", "/echo", "200"): 1.0,
    ("GET", UNMATCHED, "404"): 1.0,
    ("DELETE", UNMATCHED, "405"): 1.0,
    ("GET", "/boom", "500"): 1.0,
}


def _line(method: str, route: str, path: str, status: int, **extra: str) -> dict[str, Any]:
    line: dict[str, Any] = {"method": method, "route": route, "path": path, **extra}
    line.update(status=status, request_id=f"same-{method}", client="127.0.0.1")
    return line


SAME_LINES = [
    _line("GET", "/users/{user_id}", "/users/42", 200, query="page=2&token=***"),
    _line("GET", "/items/{name}", "/items/thing", 404),
    _line("POST", "/echo", "/echo", 200),
    _line("GET", UNMATCHED, "/no/such/path", 404),
    _line("DELETE", UNMATCHED, "/users/42", 405),
    _line("GET", "/boom", "/boom", 500),
]


@pytest.mark.anyio
async def test_same_requests_same_labels_and_fields(harness: Harness, captured: Captured) -> None:
    async with harness.client() as client:
        for method, url in SAME_REQUESTS:
            response = await client.request(method, url, headers={"X-Request-ID": f"same-{method}"})
            assert response.headers["x-request-id"] == f"same-{method}"
    assert harness.counts() == SAME_COUNTS
    lines = captured.lines()
    assert all(isinstance(line.pop("duration_ms"), float) for line in lines)
    assert lines == SAME_LINES
    # Field order is part of the format (logfmt readers and grep patterns rely on it).
    assert [list(line) for line in lines] == [list(line) for line in SAME_LINES]


@pytest.mark.anyio
async def test_example_app_labels(
    framework: str,
    database_url: str,
    redis_url: str,
    key_prefix: str,
    pg_schema: str,
    captured: Captured,
) -> None:
    from examples.users import User
    from tests.support.scenario_apps import build_app as build_example

    settings = make_settings(database_url, redis_url, key_prefix, {"search_path": pg_schema})

    async def create_tables(core: Core) -> None:
        await core.db.create_all(User.metadata)

    core = make_core(settings, on_startup=[create_tables])
    h = Harness(framework, core, build_example(framework, core))
    async with asgi_lifespan(h.app, phase_timeout=30), h.client() as client:
        created = await client.post("/users", json={"email": "obs@example.com", "name": "Obs"})
        assert created.status_code == 201, created.text
        uid = created.json()["id"]
        assert (await client.get(f"/users/{uid}")).status_code == 200
        assert (await client.get(f"/users/{uid}/cached")).status_code == 200
        assert (await client.get(f"/users/{uuid.uuid4()}")).status_code == 404
        assert (await client.get("/users")).status_code == 200
        assert (await client.delete(f"/users/{uid}")).status_code == 204
    assert h.counts() == {
        ("POST", "/users", "201"): 1.0,
        ("GET", "/users/{user_id}", "200"): 1.0,
        ("GET", "/users/{user_id}/cached", "200"): 1.0,
        ("GET", "/users/{user_id}", "404"): 1.0,
        ("GET", "/users", "200"): 1.0,
        ("DELETE", "/users/{user_id}", "204"): 1.0,
    }
    lines = captured.lines()
    assert len(lines) == 6
    assert all(len(line["request_id"]) == 32 for line in lines)


# --- framework-native middleware lists ----------------------------------------------------------


@pytest.mark.anyio
async def test_native_middleware_lists(framework: str, captured: Captured) -> None:
    # `observability_middleware()` is public for apps that build their own middleware list.
    metrics = Metrics()
    app = build_native_app(framework, observability_middleware(ObservabilitySettings(), metrics))
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.get("/users/7", headers={"X-Request-ID": "native-1"})
        boom = await client.get("/boom")
    assert ok.headers["x-request-id"] == "native-1"
    assert len(boom.headers["x-request-id"]) == 32
    assert boom.status_code == 500
    body, _ = metrics_response(metrics)
    families = _families(body.decode())
    labels = {
        (s.labels["route"], s.labels["status"])
        for s in families["http_requests"].samples
        if s.name == "http_requests_total"
    }
    assert labels == {("/users/{user_id}", "200"), ("/boom", "500")}
    assert captured.lines()[0]["request_id"] == "native-1"


# --- raw ASGI behaviour ---------------------------------------------------------------------


def full_stack(app: Any, metrics: Metrics) -> Any:
    return ObservabilityMiddleware(app, settings=ObservabilitySettings(), metrics=metrics)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "middleware",
    [
        lambda app: RequestIdMiddleware(app),
        lambda app: AccessLogMiddleware(app),
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
    for mw in (AccessLogMiddleware(app), full_stack(app, Metrics())):
        messages = await call(mw, http_scope())
        assert messages[0]["status"] == 200
    assert captured.records == []
    logger.setLevel(logging.INFO)  # levels are read per request
    await call(full_stack(app, Metrics()), http_scope())
    assert len(captured.records) == 1
