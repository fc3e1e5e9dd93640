"""Tracing with the OpenTelemetry SDK: one request is one trace holding its SQL statements, Redis
commands and cache events, on both frameworks, against real PostgreSQL and Redis.

Spans go to an `InMemorySpanExporter` through a provider given to the `Core`, never the global
one, so tests do not share tracing state.

No postponed annotations: Litestar resolves the handlers' annotations (defined inside functions,
with framework imports kept local) at definition time.
"""

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from core import Core, RedisManager, Settings
from core.observability.tracing import REQUEST_ID_ATTRIBUTE
from core.testing import asgi_lifespan
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-parameter-value"
"""Bound as a statement parameter and cached: it must appear in no span."""

STATEMENT = "SELECT CAST(:secret AS text) || CAST(:user_id AS text)"


def make_settings(
    database_url: str, redis_url: str, key_prefix: str, **observability: Any
) -> Settings:
    return Settings(
        app={"name": f"dctrace-{uuid.uuid4().hex[:8]}", "environment": "development"},
        database={"url": database_url, "pool_size": 2, "max_overflow": 0},
        redis={"url": redis_url, "key_prefix": key_prefix},
        observability={"tracing": True, **observability},
        # A cache call that outlives its bound (0.25 s by default, easily reached on a loaded
        # machine while every command is also exported as a span) fails open: the entry is not
        # stored and the next call loads again, which is correct but not the trace under test.
        cache={"operation_timeout": 10},
    )


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


def statement_of(span: ReadableSpan) -> str:
    attrs = span.attributes or {}
    return str(attrs.get("db.statement", attrs.get("db.query.text", "")))


def all_text(spans: tuple[ReadableSpan, ...]) -> str:
    """Every name, attribute and event of `spans` as one string, to search for leaks."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.append(json.dumps(dict(span.attributes or {}), default=str))
        for event in span.events:
            parts.append(event.name + json.dumps(dict(event.attributes or {}), default=str))
    return "\n".join(parts)


def tree(spans: list[ReadableSpan]) -> list[str]:
    """`spans` of one trace as indented lines, children in start order."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        events = [e.name for e in span.events]
        lines.append("  " * depth + span.name + (f" {events}" if events else ""))
        for child in by_parent.get(span.context.span_id if span.context else None, []):
            walk(child, depth + 1)

    for root in by_parent.get(None, []):
        walk(root, 0)
    return lines


# --- the core on its own (no framework) --------------------------------------------------------


async def test_the_core_traces_sql_redis_and_cache_under_the_current_span_and_undoes_it(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    core = Core(make_settings(database_url, redis_url, key_prefix), tracer_provider=provider)
    tracer = provider.get_tracer("test")
    async with core:
        engine, client = core.db.engine, core.redis.client
        with tracer.start_as_current_span("job") as job:

            async def load() -> str:
                async with core.db.get_session(read_only=True) as session:
                    result = await session.execute(
                        text(STATEMENT), {"secret": SECRET, "user_id": "1"}
                    )
                    return str(result.scalar_one())

            assert await core.redis.cache.get_or_set("job:1", load, ttl=30) == SECRET + "1"
            assert await core.redis.cache.get_or_set("job:1", load, ttl=30) == SECRET + "1"
        trace_id = job.get_span_context().trace_id
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans if s.context} == {trace_id}
    [sql] = [s for s in spans if "SELECT CAST" in statement_of(s)]
    assert sql.kind is SpanKind.CLIENT
    assert "$1" in statement_of(sql)  # as sent: placeholders, not values
    commands = [s.name for s in spans if (s.attributes or {}).get("db.system") == "redis"]
    # The miss: a lookup, the fill lock (SET NX), then the store that releases it; the hit: one
    # lookup.
    assert commands[:2] == ["GET", "SET"]
    assert commands[-2:] == ["EVALSHA", "GET"]
    [root] = [s for s in spans if s.name == "job"]
    assert [e.name for e in root.events] == ["cache.miss", "cache.fill", "cache.hit"]
    assert SECRET not in all_text(spans)

    # Shutdown took the instrumentation off the core's engine and client.
    exporter.clear()
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await engine.dispose()
    assert exporter.get_finished_spans() == ()
    assert not hasattr(client.execute_command, "__wrapped__")


async def test_parameters_are_recorded_only_when_log_query_parameters_allows_them(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    settings = make_settings(database_url, redis_url, key_prefix, log_query_parameters=True)
    core = Core(settings, tracer_provider=provider)
    async with core, core.db.get_session() as session:
        await session.execute(text(STATEMENT), {"secret": SECRET, "user_id": "2"})
    [sql] = [s for s in exporter.get_finished_spans() if "SELECT CAST" in statement_of(s)]
    attrs = sql.attributes or {}
    assert (attrs["db.query.parameter.0"], attrs["db.query.parameter.1"]) == (
        repr(SECRET),
        repr("2"),
    )


async def test_a_core_restarted_traces_again_even_on_a_client_it_was_given(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    redis_client: aioredis.Redis,
) -> None:
    # The manager never closes a client it was given, so the same client is instrumented, then
    # uninstrumented, then instrumented again.
    settings = make_settings(database_url, redis_url, key_prefix)
    redis = RedisManager(settings, client=redis_client)
    core = Core(settings, redis=redis, tracer_provider=provider)
    for _ in range(2):
        exporter.clear()
        async with core:
            await core.redis.client.ping()
            async with core.db.get_session(read_only=True) as session:
                await session.execute(text("SELECT 42"))
        spans = sorted(exporter.get_finished_spans(), key=lambda s: s.name)
        assert [(s.name, statement_of(s)) for s in spans] == [
            ("PING", "PING"),
            ("SELECT", "SELECT 42"),
        ]


def test_with_tracing_off_nothing_of_opentelemetry_is_imported(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    # A fresh interpreter: this one has the SDK loaded by the tests above. redis-py (8+) loads
    # OpenTelemetry's metrics API itself when it is installed; the core must add nothing to that.
    script = f"""
import asyncio, json, sys
import redis

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")

by_redis = loaded()
from core import Core, RedisManager, Settings
from core.observability import ObservabilityMiddleware

async def app(scope, receive, send):
    async with core.db.get_session(read_only=True) as session:
        await session.execute(__import__("sqlalchemy").text("SELECT 1"))
    await core.redis.cache.get_or_set("off", lambda: asyncio.sleep(0, "v"), ttl=5)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b""}})

async def main():
    async with core:
        wrapped = core.wrap_asgi(app)
        assert isinstance(wrapped, ObservabilityMiddleware) and wrapped._fused
        sent = []
        async def send(message):
            sent.append(message)
        async def receive():
            return {{"type": "http.request", "body": b""}}
        scope = {{"type": "http", "method": "GET", "path": "/", "headers": []}}
        await wrapped(scope, receive, send)
        assert sent[0]["status"] == 200

core = Core(Settings(
    database={{"url": {database_url!r}}},
    redis={{"url": {redis_url!r}, "key_prefix": {key_prefix!r}}},
))
asyncio.run(main())
print(json.dumps([by_redis, loaded()]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    by_redis, after = json.loads(done.stdout)
    assert after == by_redis
    assert not [
        m
        for m in after
        if m.startswith(("opentelemetry.instrumentation", "opentelemetry.propagate"))
    ]


# --- through the adapters ----------------------------------------------------------------------


def fastapi_app(core: Core) -> Any:
    from fastapi import FastAPI

    from integrations.fastapi import Cache, DbSession, install

    app = FastAPI()
    install(app, core)

    @app.get("/users/{user_id}")
    async def user(user_id: int, db: DbSession, cache: Cache) -> dict[str, Any]:
        async def load() -> str:
            result = await db.execute(text(STATEMENT), {"secret": SECRET, "user_id": str(user_id)})
            return str(result.scalar_one())

        return {"name": await cache.get_or_set(f"user:{user_id}", load, ttl=30)}

    return app


def litestar_app(core: Core) -> Any:
    from litestar import Litestar, get
    from litestar.di import NamedDependency
    from litestar.params import FromPath
    from sqlalchemy.ext.asyncio import AsyncSession

    from core.cache import Cache
    from integrations.litestar import CorePlugin

    @get("/users/{user_id:int}")
    async def user(
        user_id: FromPath[int],
        db_session: NamedDependency[AsyncSession],
        cache: NamedDependency[Cache],
    ) -> dict[str, Any]:
        async def load() -> str:
            params = {"secret": SECRET, "user_id": str(user_id)}
            return str((await db_session.execute(text(STATEMENT), params)).scalar_one())

        return {"name": await cache.get_or_set(f"user:{user_id}", load, ttl=30)}

    return Litestar(route_handlers=[user], plugins=[CorePlugin(core)])


APPS = {"fastapi": fastapi_app, "litestar": litestar_app}


if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_one_request_is_one_trace_with_its_sql_redis_and_cache_events(
        framework: str,
        database_url: str,
        redis_url: str,
        key_prefix: str,
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        core = Core(make_settings(database_url, redis_url, key_prefix), tracer_provider=provider)
        app = APPS[framework](core)
        transport = httpx.ASGITransport(app)
        async with (
            asgi_lifespan(app, phase_timeout=30),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            miss = await client.get("/users/7", headers={"x-request-id": "trace-miss"})
            hit = await client.get("/users/7", headers={"x-request-id": "trace-hit"})
        assert miss.json() == hit.json() == {"name": SECRET + "7"}
        spans = exporter.get_finished_spans()
        assert SECRET not in all_text(spans)

        traces: dict[str, list[ReadableSpan]] = {}
        for request_id in ("trace-miss", "trace-hit"):
            [server] = [
                s
                for s in spans
                if s.kind is SpanKind.SERVER
                and (s.attributes or {}).get(REQUEST_ID_ATTRIBUTE) == request_id
            ]
            assert server.parent is None
            assert server.name == "GET /users/{user_id}"
            assert (server.attributes or {})["http.response.status_code"] == 200
            assert server.context is not None
            members = [
                s for s in spans if s.context and s.context.trace_id == server.context.trace_id
            ]
            ids = {s.context.span_id for s in members if s.context}
            # One trace: every other span hangs off a span of the same request.
            assert all(
                s.parent is not None and s.parent.span_id in ids for s in members if s is not server
            )
            traces[request_id] = members

        miss_spans, hit_spans = traces["trace-miss"], traces["trace-hit"]
        print(f"\n{framework}, first request:\n" + "\n".join(tree(miss_spans)))
        print(f"{framework}, second request:\n" + "\n".join(tree(hit_spans)))
        [miss_server] = [s for s in miss_spans if s.kind is SpanKind.SERVER]
        [hit_server] = [s for s in hit_spans if s.kind is SpanKind.SERVER]
        [sql] = [s for s in miss_spans if "SELECT CAST" in statement_of(s)]
        assert sql.kind is SpanKind.CLIENT
        redis_miss = [
            s.name for s in miss_spans if (s.attributes or {}).get("db.system") == "redis"
        ]
        assert redis_miss[0] == "GET" and {"SET", "EVALSHA"} <= set(redis_miss)
        assert [e.name for e in miss_server.events] == ["cache.miss", "cache.fill"]

        assert not any("SELECT CAST" in statement_of(s) for s in hit_spans)
        redis_hit = [s.name for s in hit_spans if (s.attributes or {}).get("db.system") == "redis"]
        assert redis_hit == ["GET"]
        assert [e.name for e in hit_server.events] == ["cache.hit"]
