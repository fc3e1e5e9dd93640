"""The seed design without any web framework: `from core import ...`, the global managers in a
plain script, `get_session()`, `get_or_set(key, callback)` without a TTL, and
`get_client_context()`. Run in a fresh interpreter, configured only by the environment, as a
user's script would be (and so it runs in the session with no framework installed too)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json
from sqlalchemy import String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from core import Base, db_manager, get_settings, redis_manager


class Note(Base):
    __tablename__ = "seed_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


async def main():
    out = {}
    await db_manager.create_all(Base.metadata)
    async with db_manager.get_session() as session:
        session.add(Note(body="kept"))
    try:
        async with db_manager.get_session() as session:
            session.add(Note(body="rolled back"))
            await session.flush()
            raise RuntimeError("after writing")
    except RuntimeError:
        pass
    async with db_manager.get_session() as session:
        out["bodies"] = list(await session.scalars(select(Note.body)))

    calls = []

    async def load():
        calls.append(1)
        return {"answer": 42}

    out["first"] = await redis_manager.get_or_set("seed:answer", load)
    out["second"] = await redis_manager.get_or_set("seed:answer", load)
    out["loads"] = len(calls)
    out["ttl"] = await redis_manager.client.ttl(redis_manager.cache.redis_key("seed:answer"))
    async with redis_manager.get_client_context() as client:
        key = get_settings().redis.key_prefix + "seed:plain"
        await client.set(key, "v", ex=60)
        out["plain"] = (await client.get(key)).decode()
        await client.delete(key, redis_manager.cache.redis_key("seed:answer"))
    await redis_manager.close()
    await db_manager.close()
    print(json.dumps(out))


asyncio.run(main())
"""


@pytest.mark.anyio
async def test_the_seed_managers_in_a_plain_script(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DATABASE__SEARCH_PATH": pg_schema,
        "REDIS__KEY_PREFIX": key_prefix,
        "APP__ENVIRONMENT": "development",
    }
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    out = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert out["bodies"] == ["kept"]
    assert out["first"] == out["second"] == {"answer": 42}
    assert out["loads"] == 1
    # No TTL given: the configured default applies, so the entry does expire.
    assert 0 < out["ttl"] <= 300
    assert out["plain"] == "v"
