"""Shared fixtures: real PostgreSQL and Redis, each test isolated.

Servers come from DUALCORE_TEST_DATABASE_URL / DUALCORE_TEST_REDIS_URL, else the local
127.0.0.1:5432 / 127.0.0.1:6379 when reachable, else embedded servers started for the run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.config import DatabaseSettings
from core.testing.servers import testing_server_url
from tests.support.faultproxy import FaultProxy
from tests.support.frameworks import FRAMEWORKS

# Modules named after one framework import it at the top; modules that cover both are
# parametrised over FRAMEWORKS and need at least one. Patterns reach every area folder.
collect_ignore_glob = [f"*/test_*{f}*.py" for f in ("fastapi", "litestar") if f not in FRAMEWORKS]
if not FRAMEWORKS:
    collect_ignore_glob += [
        "integrations/test_scenarios*.py",
        "integrations/test_readme*.py",
        "integrations/test_seed_http.py",
        "observability/test_observability.py",
    ]


SCOPE = os.environ.get("DUALCORE_TEST_SCOPE", "all")
"""`all`, or `framework`: only the tests that exercise a web framework. A session that adds a
second framework to a Python already tested in full runs `framework` (nox's Litestar sessions):
the framework-independent tests would only run again, unchanged."""


def exercises_a_framework(item: pytest.Item) -> bool:
    """A framework case of a parametrised test, a test in a module named after a framework, or
    one marked as using whichever frameworks are installed."""
    if any(next(item.iter_markers(name), None) for name in ("fastapi", "litestar", "frameworks")):
        return True
    if any(name in item.path.name for name in ("fastapi", "litestar")):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    values = {str(value) for value in callspec.params.values()} | set(callspec.id.split("-"))
    return bool(values & {"fastapi", "litestar"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SCOPE == "all":
        return
    if SCOPE != "framework":
        raise pytest.UsageError(f"DUALCORE_TEST_SCOPE must be all or framework, not {SCOPE!r}")
    keep = [item for item in items if exercises_a_framework(item)]
    dropped = [item for item in items if not exercises_a_framework(item)]
    config.hook.pytest_deselected(items=dropped)
    items[:] = keep


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


@pytest.fixture
def app_name() -> str:
    """A name unique to one test: the managers built with it tag their PostgreSQL backends
    (`application_name`) and Redis connections (client name) with it, so a test finds its own."""
    return f"dctest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def probe(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An independent engine for looking at the server from outside the managers: another
    client of the same database."""
    url = DatabaseSettings(url=database_url).sqlalchemy_url()  # any accepted URL form
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port with nothing listening (connections are refused), held bound so no one
    else takes it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the shared PostgreSQL."""
    async with FaultProxy.for_url(database_url) as proxy:
        yield proxy


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the shared Redis."""
    async with FaultProxy.for_url(redis_url) as proxy:
        yield proxy
