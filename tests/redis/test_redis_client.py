"""RedisManager on a real Redis: client use, ownership, recovery after CLIENT KILL, pool bounds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.config import Settings
from core.redis_client import RedisManager

pytestmark = pytest.mark.anyio

CANARY = "s3cr3t-CANARY"


def _settings(redis_url: str, app_name: str, **redis: Any) -> Settings:
    return Settings(_env_file=None, app={"name": app_name}, redis={"url": redis_url, **redis})


@pytest.fixture
async def manager(redis_url: str, app_name: str) -> AsyncIterator[RedisManager]:
    async with RedisManager(_settings(redis_url, app_name)) as r:
        yield r


async def _client_ids(observer: aioredis.Redis, name: str) -> set[int]:
    return {int(c["id"]) for c in await observer.client_list() if c.get("name") == name}


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds; fail after 3 seconds."""
    with anyio.fail_after(3):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)


async def test_client_reads_and_writes(
    manager: RedisManager, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await manager.client.set(f"{key_prefix}a", "1")
    assert await redis_client.get(f"{key_prefix}a") == b"1"
    async with manager.get_client_context() as client:
        assert client is manager.client
        assert await client.incr(f"{key_prefix}a") == 2


async def test_connections_carry_the_app_name(
    manager: RedisManager, redis_client: aioredis.Redis, app_name: str
) -> None:
    await manager.ping()
    assert await _client_ids(redis_client, app_name)


async def test_ping_returns_round_trip_seconds(manager: RedisManager) -> None:
    latency = await manager.ping()
    assert isinstance(latency, float)
    assert 0 < latency < 5


async def test_server_version(manager: RedisManager) -> None:
    assert (await manager.server_version())[:1].isdigit()


async def test_close_owned_client_disconnects_and_restarts(
    redis_url: str, app_name: str, redis_client: aioredis.Redis
) -> None:
    r = RedisManager(_settings(redis_url, app_name))
    await r.start()
    await r.ping()
    assert await _client_ids(redis_client, app_name)
    await r.close()
    assert "started=False" in repr(r)

    async def gone() -> bool:
        return not await _client_ids(redis_client, app_name)

    await _until(gone)
    await r.close()  # closing twice is harmless

    await r.start()
    try:
        assert isinstance(await r.ping(), float)
    finally:
        await r.close()


async def test_given_client_is_not_closed(
    redis_url: str, app_name: str, redis_client: aioredis.Redis
) -> None:
    given = aioredis.Redis.from_url(redis_url, client_name=app_name)
    try:
        r = RedisManager(_settings(redis_url, "unused-name"), client=given)
        await r.start()
        assert r.client is given
        await r.ping()
        before = await _client_ids(redis_client, app_name)
        assert before
        await r.close()
        # The very same connection is still open: nothing was closed and reconnected.
        assert await _client_ids(redis_client, app_name) == before
        assert await given.ping()
    finally:
        await given.aclose()


async def test_recovers_after_client_kill(
    manager: RedisManager, redis_client: aioredis.Redis, app_name: str, key_prefix: str
) -> None:
    key = f"{key_prefix}k"
    # Several concurrent commands so the pool holds more than one idle connection.
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(manager.client.set, f"{key}{i}", str(i))
    killed = await _client_ids(redis_client, app_name)
    assert killed
    for client_id in killed:
        await redis_client.execute_command("CLIENT", "KILL", "ID", client_id)

    async def all_dead() -> bool:
        return not (await _client_ids(redis_client, app_name)) & killed

    await _until(all_dead)
    with anyio.fail_after(3):
        assert await manager.client.get(f"{key}0") == b"0"
        assert await manager.client.mget([f"{key}{i}" for i in range(4)]) == [
            b"0",
            b"1",
            b"2",
            b"3",
        ]
    now = await _client_ids(redis_client, app_name)
    assert now
    assert not now & killed


async def test_pool_wait_is_bounded(
    redis_url: str, app_name: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    # The only connection is held far longer than the pool timeout, and the socket timeout
    # outlasts the hold: only the pool timeout can end the wait.
    pool_timeout, hold = 0.2, 30
    settings = _settings(
        redis_url, app_name, max_connections=1, pool_timeout=pool_timeout, socket_timeout=hold + 5
    )
    async with RedisManager(settings) as r:
        holding = anyio.Event()

        async def hold_the_only_connection() -> None:
            holding.set()
            await r.client.blpop([f"{key_prefix}never"], timeout=hold)

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_the_only_connection)
            await holding.wait()

            async def blocked() -> bool:
                clients = await redis_client.client_list()
                return any(c.get("name") == app_name and c["cmd"] == "blpop" for c in clients)

            await _until(blocked)
            start = time.perf_counter()
            with pytest.raises(RedisConnectionError):
                await r.client.get(f"{key_prefix}x")
            elapsed = time.perf_counter() - start
            # It waited for the pool, and no longer than its bound (plus room for the event loop
            # on a busy machine).
            assert pool_timeout * 0.9 <= elapsed < pool_timeout + 1.0
            # Abandoning the blocked command must hand its connection back too.
            tg.cancel_scope.cancel()
        assert await r.client.get(f"{key_prefix}x") is None


async def test_password_reaches_the_pool_but_never_repr(app_name: str) -> None:
    r = RedisManager(_settings(f"redis://user:{CANARY}@127.0.0.1:1/0", app_name))
    try:
        assert r.client.connection_pool.connection_kwargs["password"] == CANARY
        for shown in (repr(r), r.url, r.safe_url, repr(r.client), repr(r.client.connection_pool)):
            assert CANARY not in shown
    finally:
        await r.close()


async def test_a_unix_socket_url_reaches_redis(tmp_path: Path, app_name: str) -> None:
    # The URL as operators write it, through validation to the driver and back, password and
    # database included.
    from core.embedded import EmbeddedRedis

    # Relative to the server's --dir: wherever the data directory ends up, its account owns it.
    extra = ["--unixsocket", "redis.sock", "--unixsocketperm", "700"]
    with EmbeddedRedis(tmp_path / "redis", password=CANARY, extra_args=extra) as server:
        socket_path = server.data_dir.resolve() / "redis.sock"
        url = f"unix://:{CANARY}@{socket_path}?db=2"
        settings = _settings(url, app_name)
        assert settings.redis.url == f"unix://{socket_path}?db=2"
        async with RedisManager(settings) as manager:
            await manager.client.set("unix-socket-probe", "1")
            info = await manager.client.client_info()
            assert info["db"] == 2
            assert await manager.client.get("unix-socket-probe") == b"1"
            assert CANARY not in manager.safe_url
