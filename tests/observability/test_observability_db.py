"""Slow-query logging and pool metrics against a real PostgreSQL server."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.config import ObservabilitySettings
from core.observability import Metrics, install_slow_query_log, metrics_response, observe_engine

LOGGER = "dctest.obs.slow"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        assert record.levelno == logging.WARNING
        self.lines.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=3, max_overflow=2)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.mark.anyio
async def test_slow_statement_logged_with_parameters_hidden(
    engine: AsyncEngine, records: Records
) -> None:
    uninstall = install_slow_query_log(engine, 0.1, logger=logging.getLogger(LOGGER))
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.execute(
            text("SELECT pg_sleep(:delay), CAST(:secret AS text)"),
            {"delay": 0.2, "secret": "param-canary"},
        )
        await conn.execute(text("SELECT 2"))
    [line] = records.lines
    fields = json.loads(line)
    assert fields["event"] == "slow_query"
    assert fields["duration_ms"] >= 200
    assert "pg_sleep" in fields["statement"]
    assert "parameters" not in fields
    assert "param-canary" not in line

    uninstall()
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(0.15)"))
    assert len(records.lines) == 1


@pytest.mark.anyio
async def test_parameters_logged_only_when_asked_and_failures_reported(
    engine: AsyncEngine, records: Records
) -> None:
    install_slow_query_log(
        engine, 0.05, log_parameters=True, logger=logging.getLogger(LOGGER), format="logfmt"
    )
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(:d)"), {"d": 0.1})
        await conn.execute(text("SET statement_timeout = 100"))
        with pytest.raises(DBAPIError):
            await conn.execute(text("SELECT pg_sleep(1)"))
    assert len(records.lines) == 2
    first, failed = records.lines
    assert first.startswith("event=slow_query duration_ms=")
    assert ' statement="SELECT pg_sleep($1)" parameters="(0.1,)" request_id=' in first
    assert " error=QueryCanceledError " in failed


def test_threshold_must_be_positive() -> None:
    eng = create_async_engine("postgresql+asyncpg://u@127.0.0.1/db")
    with pytest.raises(ValueError, match="threshold"):
        install_slow_query_log(eng, 0)


@pytest.mark.anyio
async def test_pool_gauges_read_at_scrape_time(engine: AsyncEngine) -> None:
    metrics = Metrics()
    settings = ObservabilitySettings(slow_query_threshold=0)
    undo = observe_engine(engine, settings, metrics, name="primary")

    def pool_values() -> dict[str, float]:
        body, _ = metrics_response(metrics)
        return {
            s.name: s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
            if s.labels.get("pool") == "primary"
        }

    async with engine.connect() as a, engine.connect() as b:
        await a.execute(text("SELECT 1"))
        await b.execute(text("SELECT 1"))
        busy = pool_values()
    idle = pool_values()
    assert busy["db_pool_size"] == 3.0
    assert busy["db_pool_checked_out"] == 2.0
    assert idle["db_pool_checked_out"] == 0.0
    assert idle["db_pool_checked_in"] == 2.0
    assert busy["db_pool_overflow"] == -1.0  # 3 allowed, 2 opened so far

    await engine.dispose()  # replaces the pool; the collector follows
    assert pool_values()["db_pool_checked_in"] == 0.0
    undo()
    assert pool_values() == {}


@pytest.mark.anyio
async def test_observe_engine_installs_slow_query_log_from_settings(engine: AsyncEngine) -> None:
    handler = Records()
    logger = logging.getLogger("dualcore.slow_query")
    logger.addHandler(handler)
    try:
        settings = ObservabilitySettings(slow_query_threshold=0.05, log_format="logfmt")
        undo = observe_engine(engine, settings, metrics=None)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.08)"))
        undo()
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.08)"))
    finally:
        logger.removeHandler(handler)
    [line] = handler.lines
    assert line.startswith("event=slow_query duration_ms=")
    assert 'statement="SELECT pg_sleep(0.08)"' in line
    assert "parameters=" not in line


@pytest.mark.anyio
async def test_real_cache_and_breaker_feed_metrics(redis_client: Any, key_prefix: str) -> None:
    from core.cache import Cache
    from core.resilience import CircuitBreaker

    metrics = Metrics()
    breaker = CircuitBreaker("redis", failure_threshold=1)
    metrics.watch_breaker(breaker)
    cache = Cache(redis_client, prefix=key_prefix, metrics=metrics.cache("users"))

    async def load() -> dict[str, int]:
        return {"id": 1}

    assert await cache.get_or_set("u:1", load, ttl=30) == {"id": 1}
    assert await cache.get_or_set("u:1", load, ttl=30) == {"id": 1}
    await redis_client.set(cache.redis_key("u:2"), b"\xff not a cache entry")
    assert await cache.get("u:2") is None
    await cache.aclose()

    breaker.record_failure(ConnectionError("down"))
    body, _ = metrics_response(metrics)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }

    def event(name: str) -> float:
        return samples.get(("cache_events_total", (("cache", "users"), ("event", name))), 0.0)

    assert event("hits") == 1.0
    assert event("misses") >= 2.0
    assert event("loader_calls") == 1.0
    assert event("decode_failures") == 1.0
    assert event("other") == 0.0
    assert samples[("circuit_breaker_state", (("name", "redis"), ("state", "open")))] == 1.0
