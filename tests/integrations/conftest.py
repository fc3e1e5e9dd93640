"""Fixtures of the adapter-level tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from core import Core, Settings
from tests.support.seed_models import TAKEN, SeedUser


@pytest.fixture
async def seed_core(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> AsyncIterator[Core]:
    """A started core around a private schema holding the seed's users table, with one user
    (`TAKEN`) already stored."""
    settings = Settings(
        app={"name": f"dcseed-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "search_path": pg_schema, "pool_size": 2},
        redis={"url": redis_url, "key_prefix": key_prefix},
        resilience={"breaker_failure_threshold": 2},
    )
    async with Core(settings) as c:
        await c.db.create_all(SeedUser.metadata)
        async with c.db.get_session() as session:
            session.add(SeedUser(email=TAKEN, name="first"))
        yield c
