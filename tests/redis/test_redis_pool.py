"""The Redis client's pool: never more than `max_connections`, a caller that finds none waits
for the next one released (up to `pool_timeout`), and a waiter that gives up never strands a
connection that another waiter could have had.

A connection is held by a BLPOP on a key nobody pushes to; pushing to it ends the hold.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.config import Settings
from core.redis_client import RedisManager

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""The pool timeout of these tests: far longer than any wait they expect to end."""


def _manager(redis_url: str, app_name: str, **redis: Any) -> RedisManager:
    settings = {"url": redis_url, "pool_timeout": WAIT, "socket_timeout": 30, **redis}
    return RedisManager(Settings(_env_file=None, app={"name": app_name}, redis=settings))


async def _names_connected(observer: aioredis.Redis, name: str) -> int:
    return sum(1 for c in await observer.client_list() if c.get("name") == name)


async def _blocked(observer: aioredis.Redis, name: str, count: int) -> None:
    """Wait until `count` of the app's connections sit in a BLPOP."""
    with anyio.fail_after(5):
        while True:
            clients = await observer.client_list()
            if sum(c.get("name") == name and c["cmd"] == "blpop" for c in clients) >= count:
                return
            await anyio.sleep(0.02)


async def test_a_caller_finding_no_connection_gets_the_next_one_released(
    redis_url: str, app_name: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    gate = f"{key_prefix}gate"
    async with _manager(redis_url, app_name, max_connections=1) as r:
        hold = asyncio.ensure_future(r.client.blpop([gate], timeout=20))
        await _blocked(redis_client, app_name, 1)
        waiting = asyncio.ensure_future(r.client.set(f"{key_prefix}k", "v"))
        await anyio.sleep(0.2)
        assert not waiting.done()  # it waits for the pool, it does not fail
        await redis_client.rpush(gate, "go")
        with anyio.fail_after(WAIT / 2):
            assert list(await hold) == [gate.encode(), b"go"]
            assert await waiting is True
        assert await redis_client.get(f"{key_prefix}k") == b"v"


async def test_a_waiter_that_gives_up_leaves_the_connection_to_the_next(
    redis_url: str, app_name: str, key_prefix: str
) -> None:
    async with _manager(redis_url, app_name, max_connections=1) as r:
        pool = r.client.connection_pool
        held = await pool.get_connection()
        first = asyncio.ensure_future(r.client.get(f"{key_prefix}a"))
        second = asyncio.ensure_future(r.client.get(f"{key_prefix}b"))
        await anyio.sleep(0.2)
        assert not first.done() and not second.done()
        # The connection comes back and the first waiter is cancelled in the same turn of the
        # loop: woken, it leaves, and the second must get the connection instead.
        await pool.release(held)
        first.cancel()
        with anyio.fail_after(WAIT / 2):
            assert await second is None
        assert first.cancelled()


async def test_never_more_connections_than_max_connections(
    redis_url: str, app_name: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    async with _manager(redis_url, app_name, max_connections=3) as r:
        peak = 0

        async def one(n: int) -> None:
            nonlocal peak
            await r.client.set(f"{key_prefix}{n}", n)
            assert int(await r.client.get(f"{key_prefix}{n}")) == n

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await _names_connected(redis_client, app_name))
                await anyio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        with anyio.fail_after(WAIT):
            await asyncio.gather(*(one(n) for n in range(200)))
        watcher.cancel()
        pool = r.client.connection_pool
        assert peak <= 3
        assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
        assert len(pool._available_connections) <= 3  # type: ignore[attr-defined]


async def test_the_wait_is_bounded_by_the_pool_timeout(
    redis_url: str, app_name: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    gate = f"{key_prefix}gate"
    async with _manager(redis_url, app_name, max_connections=1, pool_timeout=0.2) as r:
        hold = asyncio.ensure_future(r.client.blpop([gate], timeout=20))
        await _blocked(redis_client, app_name, 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with anyio.fail_after(WAIT), pytest.raises(RedisConnectionError, match="No connection"):
            await r.client.get(f"{key_prefix}x")
        assert loop.time() - start >= 0.2
        await redis_client.rpush(gate, "go")
        await hold
        # The pool is whole again.
        assert await r.client.get(f"{key_prefix}x") is None
