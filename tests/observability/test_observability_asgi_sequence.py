"""The fused `ObservabilityMiddleware` as the server sees it.

Exact ASGI message sequences for apps that fail before and after starting their response (the
middleware answers 500 only when nothing was sent yet), and the bookkeeping of requests whose task
is cancelled mid-request (in-progress gauge back to 0, the request counted, one access-log line).

No postponed annotations: Litestar resolves the handlers' annotations (defined inside functions,
with framework imports kept local) at definition time.
"""

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.config import ObservabilitySettings
from core.observability import (
    ACCESS_LOGGER,
    UNMATCHED,
    Metrics,
    ObservabilityMiddleware,
    metrics_response,
)
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio

RID = b"rid-seq-1"
ID_HEADER = (b"x-request-id", RID)
ERROR_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"21"),
        ID_HEADER,
    ],
}
ERROR_BODY = {"type": "http.response.body", "body": b"Internal Server Error", "more_body": False}


# --- harness -----------------------------------------------------------------------------------


class AccessLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in self.records]


@pytest.fixture
def access() -> Iterator[AccessLines]:
    handler = AccessLines()
    logger = logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Server:
    """One request as an ASGI server runs it: the request body once, then the client waits; every
    message the app sends is recorded in order."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))


def http_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), ID_HEADER],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }


def stack(app: Any, metrics: Metrics) -> ObservabilityMiddleware:
    middleware = ObservabilityMiddleware(app, settings=ObservabilitySettings(), metrics=metrics)
    assert middleware._fused  # the default settings take the fused path, the one under test
    return middleware


async def run(app: Any, path: str) -> tuple[list[dict[str, Any]], BaseException | None]:
    """(messages the server received, exception the app call raised or None)."""
    server = Server()
    try:
        with anyio.fail_after(10):
            await app(http_scope(path), server.receive, server.send)
    except Exception as exc:
        return server.sent, exc
    return server.sent, None


def with_id(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` as they should leave the middleware: the request id added to the start."""
    return [
        {**m, "headers": [*m.get("headers", []), ID_HEADER]}
        if m["type"] == "http.response.start"
        else m
        for m in messages
    ]


def samples(metrics: Metrics, name: str) -> list[Any]:
    body, _ = metrics_response(metrics)
    return [
        s
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name
    ]


def counts(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in samples(metrics, "http_requests_total")
    }


def in_progress(metrics: Metrics) -> float:
    [sample] = samples(metrics, "http_requests_in_progress")
    return float(sample.value)


# --- apps failing before or after their response started --------------------------------------


async def test_an_app_failing_before_responding_is_answered_one_500_and_reraised(
    access: AccessLines,
) -> None:
    metrics = Metrics()

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("inner failure")

    sent, exc = await run(stack(broken, metrics), "/x")
    assert isinstance(exc, ValueError)
    assert sent == [ERROR_START, ERROR_BODY]
    assert [line["status"] for line in access.lines()] == [500]
    assert counts(metrics) == {("GET", UNMATCHED, "500"): 1.0}


START_200 = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x")]}
PART = {"type": "http.response.body", "body": b"part", "more_body": True}
LAST = {"type": "http.response.body", "body": b"end", "more_body": False}


@pytest.mark.parametrize(
    ("before_raising", "logged_status"),
    [
        ([START_200], 500),  # started, no body yet
        ([START_200, PART], 500),  # mid-stream
        ([START_200, PART, LAST], 200),  # complete: the client got its whole 200
    ],
    ids=["after-start", "mid-stream", "after-last-chunk"],
)
async def test_an_app_failing_after_starting_its_response_gets_nothing_more_sent(
    before_raising: list[dict[str, Any]], logged_status: int, access: AccessLines
) -> None:
    metrics = Metrics()

    async def half(scope: Any, receive: Any, send: Any) -> None:
        for message in before_raising:
            await send(message)
        raise RuntimeError("failed after starting")

    sent, exc = await run(stack(half, metrics), "/s")
    assert isinstance(exc, RuntimeError)
    # No second http.response.start: the server would refuse it, or worse, the client would
    # read the 500's bytes appended to the body it is already receiving.
    assert sent == with_id(before_raising)
    assert [line["status"] for line in access.lines()] == [logged_status]
    assert counts(metrics) == {("GET", UNMATCHED, str(logged_status)): 1.0}


def _fastapi_app(entered: asyncio.Event) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/broken")
    async def broken() -> StreamingResponse:
        return StreamingResponse(_broken_stream(), media_type="text/plain")

    @app.get("/wait")
    async def wait() -> None:
        entered.set()
        await anyio.sleep_forever()

    return app


def _litestar_app(entered: asyncio.Event) -> Any:
    from litestar import Litestar, get
    from litestar.response import Stream

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @get("/broken")
    async def broken() -> Stream:
        return Stream(_broken_stream(), media_type="text/plain")

    @get("/wait")
    async def wait() -> None:
        entered.set()
        await anyio.sleep_forever()

    # Litestar would otherwise reconfigure the process's logging.
    return Litestar([boom, broken, wait], logging_config=None)


async def _broken_stream() -> Any:
    yield b"part"
    raise RuntimeError("stream broke")


APPS: dict[str, Callable[[asyncio.Event], Any]] = {
    "fastapi": _fastapi_app,
    "litestar": _litestar_app,
}


# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    @pytest.mark.parametrize("path", ["/boom", "/broken"])
    async def test_a_framework_app_failing_reaches_the_server_exactly_as_the_framework_sent_it(
        framework: str, path: str, access: AccessLines
    ) -> None:
        # /boom: the framework answers 500 itself (FastAPI then re-raises, Litestar does not);
        # /broken: a stream fails after its first chunk (both re-raise). Either way the middleware
        # adds its header and nothing else.
        bare_sent, bare_exc = await run(APPS[framework](asyncio.Event()), path)
        metrics = Metrics()
        sent, exc = await run(stack(APPS[framework](asyncio.Event()), metrics), path)
        assert bare_sent[0]["type"] == "http.response.start"
        assert sent == with_id(bare_sent)
        assert [m["type"] for m in sent].count("http.response.start") == 1
        assert type(exc) is type(bare_exc)
        # Neither response completed from the middleware's view (/broken's stream never ended).
        [line] = access.lines()
        assert (line["route"], line["status"]) == (path, 500)
        assert counts(metrics) == {("GET", path, "500"): 1.0}

# --- cancelled requests ------------------------------------------------------------------------


async def _cancel_mid_request(
    app: Any, path: str, entered: asyncio.Event, metrics: Metrics
) -> Server:
    """Run one request in a task, cancel the task once the app is inside it, return the server."""
    server = Server()
    task = asyncio.get_running_loop().create_task(
        stack(app, metrics)(http_scope(path), server.receive, server.send)
    )
    try:
        with anyio.fail_after(10):
            await entered.wait()
        assert in_progress(metrics) == 1.0
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return server


@pytest.mark.parametrize("started", [False, True], ids=["before-start", "mid-stream"])
async def test_a_cancelled_request_is_counted_and_logged_once(
    started: bool, access: AccessLines
) -> None:
    metrics = Metrics()
    entered = asyncio.Event()
    before_waiting = [START_200, PART] if started else []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        for message in before_waiting:
            await send(message)
        entered.set()
        await anyio.sleep_forever()

    server = await _cancel_mid_request(slow, "/slow", entered, metrics)
    assert in_progress(metrics) == 0.0
    # The response never completed: recorded as a 500, like any request whose app did not finish.
    assert counts(metrics) == {("GET", UNMATCHED, "500"): 1.0}
    [line] = access.lines()
    assert (line["path"], line["status"], line["request_id"]) == ("/slow", 500, RID.decode())
    # Nothing is sent on the cancelled request's behalf: the connection is going away.
    assert server.sent == with_id(before_waiting)


# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_a_cancelled_framework_request_is_counted_and_logged_once(
        framework: str, access: AccessLines
    ) -> None:
        metrics = Metrics()
        entered = asyncio.Event()
        server = await _cancel_mid_request(APPS[framework](entered), "/wait", entered, metrics)
        assert in_progress(metrics) == 0.0
        assert counts(metrics) == {("GET", "/wait", "500"): 1.0}
        [line] = access.lines()
        assert (line["route"], line["status"], line["request_id"]) == ("/wait", 500, RID.decode())
        assert server.sent == []
