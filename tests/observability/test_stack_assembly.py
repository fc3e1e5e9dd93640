"""The observability stack as assembled from settings, to the figure: with tracing on its layers
run as a chain that keeps the request id, access line, metrics, trace context and the app's own
scope, body and send; fused, it counts and times requests exactly; engines observed report their
pool and log slow statements with parameters only when allowed."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from opentelemetry import trace
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import ObservabilitySettings
from core.observability import (
    Metrics,
    ObservabilityMiddleware,
    observability_middleware,
    observe_engine,
)

pytestmark = pytest.mark.anyio

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
TRACEPARENT = f"00-{TRACE_ID:032x}-b7ad6b7169203331-01"


def _requests_counted(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["method"], s.labels["status"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "http_requests_total"
    }


async def test_the_chained_stack_traces_logs_counts_and_passes_everything_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["path"] = scope["path"]
        seen["body"] = (await receive())["body"]
        seen["trace_id"] = trace.get_current_span().get_span_context().trace_id
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    settings = ObservabilitySettings(tracing=True, request_id_header="x-correlation-id")
    metrics = Metrics()
    access = logging.getLogger("tests.stack.access")
    middleware = ObservabilityMiddleware(
        app, settings=settings, metrics=metrics, access_logger=access
    )
    assert not middleware._fused  # tracing is not one of the fused layers

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"payload", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/things",
        "raw_path": b"/things",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"x-correlation-id", b"req-123"),
            (b"traceparent", TRACEPARENT.encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }
    with caplog.at_level(logging.INFO, logger="tests.stack.access"):
        await middleware(scope, receive, send)

    assert seen == {"path": "/things", "body": b"payload", "trace_id": TRACE_ID}
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 201
    assert (b"x-correlation-id", b"req-123") in sent[0]["headers"]
    assert sent[1]["body"] == b"made"
    [line] = [r.getMessage() for r in caplog.records if r.name == "tests.stack.access"]
    assert "req-123" in line
    assert "/things" in line
    assert "201" in line
    assert _requests_counted(metrics) == {("POST", "201"): 1.0}


async def test_without_tracing_the_same_request_is_not_traced() -> None:
    seen: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ObservabilityMiddleware(app, settings=ObservabilitySettings(), metrics=Metrics())
    assert middleware._fused

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "query_string": b"",
        "headers": [(b"traceparent", TRACEPARENT.encode())],
    }
    await middleware(scope, receive, send)
    assert seen == [0]


async def _get(middleware: ObservabilityMiddleware, scope: dict[str, Any]) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await middleware(scope, receive, send)


async def _no_content(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_requests_are_counted_with_the_access_log_off() -> None:
    metrics = Metrics()
    settings = ObservabilitySettings(access_log=False)
    middleware = ObservabilityMiddleware(_no_content, settings=settings, metrics=metrics)
    assert middleware._fused
    await _get(middleware, {"type": "http", "method": "GET", "path": "/", "headers": []})
    assert _requests_counted(metrics) == {("GET", "204"): 1.0}


async def test_a_scope_without_a_query_string_logs_no_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = logging.getLogger("tests.stack.noquery")
    middleware = ObservabilityMiddleware(
        _no_content, settings=ObservabilitySettings(), metrics=Metrics(), access_logger=access
    )
    with caplog.at_level(logging.INFO, logger="tests.stack.noquery"):
        await _get(middleware, {"type": "http", "method": "GET", "path": "/p", "headers": []})
    [line] = [r.getMessage() for r in caplog.records if r.name == "tests.stack.noquery"]
    assert '"path":"/p"' in line
    assert "query" not in line


async def test_the_duration_logged_and_observed_is_the_requests_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    access = logging.getLogger("tests.stack.duration")
    middleware = ObservabilityMiddleware(
        _no_content, settings=ObservabilitySettings(), metrics=metrics, access_logger=access
    )
    with caplog.at_level(logging.INFO, logger="tests.stack.duration"):
        started = time.perf_counter()
        await _get(middleware, {"type": "http", "method": "GET", "path": "/", "headers": []})
        elapsed = time.perf_counter() - started
    [record] = [r for r in caplog.records if r.name == "tests.stack.duration"]
    logged_ms = json.loads(record.getMessage())["duration_ms"]
    assert 0 <= logged_ms <= elapsed * 1000 + 0.001
    [observed] = [
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "http_request_duration_seconds_sum"
    ]
    assert 0 <= observed <= elapsed


def test_metrics_without_the_object_that_serves_them_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^metrics_enabled needs the Metrics object that /metrics exposes$"
    ):
        observability_middleware(ObservabilitySettings(metrics_enabled=True))


def _pool_labels(metrics: Metrics) -> set[str]:
    return {
        s.labels["pool"]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.startswith("db_pool_")
    }


async def test_an_observed_engine_reports_its_pool_as_primary_until_undone(
    database_url: str,
) -> None:
    metrics = Metrics()
    engine = create_async_engine(database_url)
    try:
        undo = observe_engine(engine, ObservabilitySettings(), metrics)
        assert _pool_labels(metrics) == {"primary"}
        undo()
        assert _pool_labels(metrics) == set()
    finally:
        await engine.dispose()


async def test_a_slow_statement_is_logged_with_its_parameters_when_allowed(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "param-marker-7f3a"
    lines: dict[bool, str] = {}
    for allowed in (True, False):
        settings = ObservabilitySettings(
            slow_query_threshold=0.01, log_query_parameters=allowed, metrics_enabled=False
        )
        engine = create_async_engine(database_url)
        undo = observe_engine(engine, settings)
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, logger="dualcore.slow_query"):
                async with engine.connect() as conn:
                    await conn.execute(
                        text("SELECT pg_sleep(0.05), CAST(:v AS text)"), {"v": marker}
                    )
        finally:
            undo()
            await engine.dispose()
        [line] = [r.getMessage() for r in caplog.records if r.name == "dualcore.slow_query"]
        lines[allowed] = line
    assert marker in lines[True]
    assert "pg_sleep" in lines[False]
    assert marker not in lines[False]
