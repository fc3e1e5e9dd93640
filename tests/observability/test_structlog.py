"""structlog: the request id in a service's own structlog events through `structlog_processor`,
and the access and slow-query logs as structlog events with `OBSERVABILITY__STRUCTLOG=true`,
through structlog's real pipeline (a configured processor chain ending in `LogCapture`).

No postponed annotations: Litestar resolves the handlers' annotations (defined inside functions,
with framework imports kept local) at definition time.
"""

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import text
from structlog.testing import LogCapture

from core import Core, Settings
from core.config import ObservabilitySettings
from core.observability import (
    ACCESS_LOGGER,
    SLOW_QUERY_LOGGER,
    AccessLogger,
    StructlogAccessLogger,
    reset_request_id,
    set_request_id,
    structlog_processor,
)
from core.observability.formatting import FIELDS_ATTR
from core.testing import asgi_lifespan
from tests.support.frameworks import FRAMEWORKS
from tests.support.logs import attached

SLOW = "SELECT pg_sleep(0.02)"


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    """structlog configured as a service would, with the processor, into a list."""
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog_processor, capture],
        cache_logger_on_first_use=False,
    )
    try:
        yield capture
    finally:
        structlog.reset_defaults()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def stdlib_lines() -> Iterator[Records]:
    """What reaches the stdlib access and slow-query loggers (levels opened to INFO)."""
    handler = Records()
    with attached(handler, ACCESS_LOGGER, SLOW_QUERY_LOGGER):
        yield handler


def make_settings(database_url: str, redis_url: str, key_prefix: str) -> Settings:
    return Settings(
        app={"name": f"dcslog-{uuid.uuid4().hex[:8]}", "environment": "development"},
        database={"url": database_url, "pool_size": 2, "max_overflow": 0},
        redis={"url": redis_url, "key_prefix": key_prefix},
        observability={"structlog": True, "slow_query_threshold": 0.005},
    )


def by_event(entries: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["event"] == event]


# --- the processor -----------------------------------------------------------------------------


def test_the_processor_adds_the_current_request_id_and_nothing_outside_a_request(
    captured: LogCapture,
) -> None:
    log = structlog.get_logger("svc")
    log.info("before")
    token = set_request_id("rid-structlog-1")
    try:
        log.info("inside", user=7)
        log.info("own id kept", request_id="given")
    finally:
        reset_request_id(token)
    assert captured.entries == [
        {"event": "before", "log_level": "info"},
        {"event": "inside", "user": 7, "request_id": "rid-structlog-1", "log_level": "info"},
        {"event": "own id kept", "request_id": "given", "log_level": "info"},
    ]


def test_stdlib_access_and_slow_query_records_unpack_into_fields_in_a_processor_formatter() -> None:
    # A service routing stdlib logging through structlog's formatter gets fields, not a JSON
    # line inside its own line.
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog_processor],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )
    )
    logger = logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        scope = {"method": "GET", "client": ("10.0.0.9", 4711)}
        AccessLogger().emit(scope, "/users/{id}", "/users/3", b"token=abc&x=1", 200, 0.0015, "r-9")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert json.loads(out.getvalue()) == {
        "event": "request",
        "method": "GET",
        "route": "/users/{id}",
        "path": "/users/3",
        "query": "token=***&x=1",
        "status": 200,
        "duration_ms": 1.5,
        "request_id": "r-9",
        "client": "10.0.0.9",
    }


def test_structlog_access_events_carry_exactly_the_stdlib_lines_fields(
    captured: LogCapture, stdlib_lines: Records
) -> None:
    scope = {"method": "POST", "client": ("10.1.2.3", 5000)}
    args: tuple[Any, ...] = ("/orders/{id}", "/orders/9", b"sig=s&page=2", 201, 0.0123456, "rid-a")
    AccessLogger().emit(scope, *args)
    StructlogAccessLogger().emit(scope, *args)
    long_path = "/x" * 600
    AccessLogger().emit(scope, "/x", long_path, b"", 404, 0.001, None)
    StructlogAccessLogger().emit(scope, "/x", long_path, b"", 404, 0.001, None)
    stdlib = [getattr(r, FIELDS_ATTR) for r in stdlib_lines.records]
    events = [
        {k: v for k, v in e.items() if k not in ("event", "log_level")} for e in captured.entries
    ]
    assert events == stdlib
    assert [list(e) for e in events] == [list(f) for f in stdlib]  # same order too
    assert [(e["event"], e["log_level"]) for e in captured.entries] == [("request", "info")] * 2


# --- through the core's ASGI layers and a real database ----------------------------------------


@pytest.mark.anyio
async def test_a_request_logs_the_services_events_slow_queries_and_access_through_structlog(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    captured: LogCapture,
    stdlib_lines: Records,
) -> None:
    core = Core(make_settings(database_url, redis_url, key_prefix))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        structlog.get_logger("svc").info("working", item=3)
        async with core.db.get_session(read_only=True) as session:
            await session.execute(text(SLOW))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with core:
        wrapped = core.wrap_asgi(app)
        transport = httpx.ASGITransport(wrapped)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/work?a=1", headers={"x-request-id": "rid-core-1"})
    assert response.status_code == 200
    [working] = by_event(captured.entries, "working")
    [slow] = by_event(captured.entries, "slow_query")
    [access] = by_event(captured.entries, "request")
    assert working == {
        "event": "working",
        "item": 3,
        "request_id": "rid-core-1",
        "log_level": "info",
    }
    assert (slow["statement"], slow["request_id"], slow["log_level"]) == (
        SLOW,
        "rid-core-1",
        "warning",
    )
    assert slow["duration_ms"] >= 20
    assert {k: access[k] for k in ("method", "path", "query", "status", "request_id")} == {
        "method": "GET",
        "path": "/work",
        "query": "a=1",
        "status": 200,
        "request_id": "rid-core-1",
    }
    assert access["duration_ms"] >= slow["duration_ms"]
    assert stdlib_lines.records == []  # structlog instead, not as well


def test_structlog_is_off_by_default() -> None:
    assert ObservabilitySettings().structlog is False


if FRAMEWORKS:

    def fastapi_app(core: Core) -> Any:
        from fastapi import FastAPI

        from integrations.fastapi import ReadDbSession, install

        app = FastAPI()
        install(app, core)

        @app.get("/items/{item_id}")
        async def item(item_id: int, db: ReadDbSession) -> dict[str, int]:
            structlog.get_logger("svc").info("loading", item=item_id)
            await db.execute(text(SLOW))
            return {"id": item_id}

        return app

    def litestar_app(core: Core) -> Any:
        from litestar import Litestar, get
        from litestar.di import NamedDependency
        from litestar.params import FromPath
        from sqlalchemy.ext.asyncio import AsyncSession

        from integrations.litestar import CorePlugin

        @get("/items/{item_id:int}")
        async def item(
            item_id: FromPath[int], read_session: NamedDependency[AsyncSession]
        ) -> dict[str, int]:
            structlog.get_logger("svc").info("loading", item=item_id)
            await read_session.execute(text(SLOW))
            return {"id": item_id}

        return Litestar(route_handlers=[item], plugins=[CorePlugin(core)])

    APPS = {"fastapi": fastapi_app, "litestar": litestar_app}

    @pytest.mark.anyio
    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_both_frameworks_log_the_request_through_structlog_with_its_id(
        framework: str,
        database_url: str,
        redis_url: str,
        key_prefix: str,
        captured: LogCapture,
        stdlib_lines: Records,
    ) -> None:
        core = Core(make_settings(database_url, redis_url, key_prefix))
        app = APPS[framework](core)
        transport = httpx.ASGITransport(app)
        async with (
            asgi_lifespan(app, phase_timeout=30),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            response = await client.get("/items/5", headers={"x-request-id": "rid-fw-1"})
            generated = await client.get("/items/6")
        assert response.json() == {"id": 5}
        [first, second] = by_event(captured.entries, "request")
        assert {k: first[k] for k in ("method", "route", "path", "status", "request_id")} == {
            "method": "GET",
            "route": "/items/{item_id}",
            "path": "/items/5",
            "status": 200,
            "request_id": "rid-fw-1",
        }
        assert second["request_id"] == generated.headers["x-request-id"] != "rid-fw-1"
        loading = by_event(captured.entries, "loading")
        assert [(e["item"], e["request_id"]) for e in loading] == [
            (5, "rid-fw-1"),
            (6, second["request_id"]),
        ]
        slow = by_event(captured.entries, "slow_query")
        assert [e["request_id"] for e in slow] == ["rid-fw-1", second["request_id"]]
        assert stdlib_lines.records == []
