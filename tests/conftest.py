"""Shared fixtures: real PostgreSQL and Redis, each test isolated.

Servers come from DUALCORE_TEST_DATABASE_URL / DUALCORE_TEST_REDIS_URL, else the local
127.0.0.1:5432 / 127.0.0.1:6379 when reachable, else embedded servers started for the run.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.testing.servers import testing_server_url


def _frameworks() -> list[str]:
    """Frameworks under test: DUALCORE_TEST_FRAMEWORKS (comma list or "none"), else all
    installed. Naming one that is not installed is an error, never a silent skip."""
    installed = [f for f in ("fastapi", "litestar") if importlib.util.find_spec(f) is not None]
    wanted = os.environ.get("DUALCORE_TEST_FRAMEWORKS")
    if wanted is None:
        return installed
    names = [] if wanted.strip() == "none" else [w.strip() for w in wanted.split(",")]
    missing = [n for n in names if n not in installed]
    if missing:
        raise pytest.UsageError(f"DUALCORE_TEST_FRAMEWORKS names uninstalled {missing}")
    return names


FRAMEWORKS = _frameworks()

# Modules named after one framework import it at the top; modules that cover both are
# parametrised over FRAMEWORKS and need at least one.
collect_ignore_glob = [f"test_*{f}*.py" for f in ("fastapi", "litestar") if f not in FRAMEWORKS]
if not FRAMEWORKS:
    collect_ignore_glob += [
        "test_scenarios*.py",
        "test_observability.py",
        "test_readme*.py",
        "test_seed_http.py",
    ]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a real PostgreSQL server for this test run."""
    with testing_server_url("postgres") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server for this test run."""
    with testing_server_url("redis") as url:
        yield url


@pytest.fixture
def key_prefix() -> str:
    """A Redis key namespace private to one test."""
    return f"dctest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client; keys under `key_prefix` are deleted afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def pg_schema(database_url: str) -> AsyncIterator[str]:
    """A PostgreSQL schema private to one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{name}"'))
        yield name
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        await engine.dispose()
