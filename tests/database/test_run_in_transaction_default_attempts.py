"""DatabaseManager.run_in_transaction without `attempts`: the configured retry limit bounds it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from core.config import DatabaseSettings, Settings
from core.database import DatabaseManager
from core.resilience import retry_attempts, sqlstate_of

pytestmark = pytest.mark.anyio

CONFIGURED_ATTEMPTS = 2


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[DatabaseManager]:
    settings = Settings(
        _env_file=None,
        app={"name": f"dctest-{uuid.uuid4().hex[:12]}"},
        database={"url": database_url, "pool_size": 2, "max_overflow": 0, "pool_timeout": 5},
        # The time limit is far off: only the attempt limit can stop the retries here.
        resilience={
            "retry_attempts": CONFIGURED_ATTEMPTS,
            "retry_base_delay": 0.01,
            "retry_max_delay": 0.02,
            "retry_max_time": 120,
        },
    )
    async with DatabaseManager(settings) as manager:
        yield manager


@pytest.fixture
async def probe(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Another client of the same database, outside the manager."""
    engine = create_async_engine(
        DatabaseSettings(url=database_url).sqlalchemy_url(), poolclass=NullPool
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_the_configured_retry_attempts_bound_a_unit_that_always_conflicts(
    db: DatabaseManager, probe: AsyncEngine, pg_schema: str
) -> None:
    table = f'"{pg_schema}".counter'
    async with probe.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"))
        await conn.execute(text(f"INSERT INTO {table} VALUES (1, 0)"))
    calls = 0

    async def always_conflicts(session: AsyncSession) -> None:
        # Another client changes the row between this attempt's snapshot and its write: every
        # attempt is refused with 40001.
        nonlocal calls
        calls += 1
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        await session.execute(text(f"SELECT n FROM {table} WHERE id = 1"))
        async with probe.begin() as conn:
            await conn.execute(text(f"UPDATE {table} SET n = n + 100 WHERE id = 1"))
        await session.execute(text(f"UPDATE {table} SET n = n + 1 WHERE id = 1"))

    with anyio.fail_after(15), pytest.raises(DBAPIError) as info:
        await db.run_in_transaction(always_conflicts)
    assert calls == CONFIGURED_ATTEMPTS
    assert sqlstate_of(info.value) == "40001"
    assert retry_attempts(info.value) == CONFIGURED_ATTEMPTS
    async with probe.connect() as conn:
        stored = (await conn.execute(text(f"SELECT n FROM {table}"))).scalar_one()
    assert stored == 100 * CONFIGURED_ATTEMPTS  # no attempt of the unit left anything
    assert db.engine.pool.checkedout() == 0
