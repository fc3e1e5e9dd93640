"""The fault proxy in front of the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_exc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.resilience import is_transient
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.anyio


def _pg_dsn(database_url: str) -> str:
    # asyncpg speaks plain postgresql:// URLs.
    return "postgresql://" + database_url.split("://", 1)[1]


async def _pg_connect(
    proxy: FaultProxy, database_url: str, connect_timeout: float = 2.0
) -> asyncpg.Connection:
    return await asyncpg.connect(proxy.url_for(_pg_dsn(database_url)), timeout=connect_timeout)


def _redis(proxy: FaultProxy, redis_url: str, timeout: float = 1.0) -> aioredis.Redis:
    # No client-side retries: each test sees exactly what one command meets.
    return aioredis.Redis.from_url(
        proxy.url_for(redis_url),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def test_url_for_keeps_user_path_and_query() -> None:
    proxy = FaultProxy("db.internal", 5432)
    proxy.port = 40123
    assert (
        proxy.url_for("postgresql+asyncpg://app:pw@db.internal:5432/main?ssl=disable")
        == "postgresql+asyncpg://app:pw@127.0.0.1:40123/main?ssl=disable"
    )
    assert proxy.url_for("redis://cache/2") == "redis://127.0.0.1:40123/2"
    target = FaultProxy.for_url("redis://cache.internal/0")
    assert (target.target_host, target.target_port) == ("cache.internal", 6379)


async def test_pass_through(
    pg_proxy: FaultProxy, redis_proxy: FaultProxy, database_url: str, redis_url: str
) -> None:
    with anyio.fail_after(10):
        conn = await _pg_connect(pg_proxy, database_url)
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
            big = await conn.fetchval("SELECT repeat('x', 300000)")
            assert len(big) == 300000  # several chunks each way
        finally:
            await conn.close()
        client = _redis(redis_proxy, redis_url)
        try:
            assert await client.ping() is True
        finally:
            await client.aclose()
    assert pg_proxy.accepted == 1


async def test_delay_slows_each_round_trip(redis_proxy: FaultProxy, redis_url: str) -> None:
    client = _redis(redis_proxy, redis_url)
    try:
        with anyio.fail_after(10):
            await client.ping()
            redis_proxy.delay(0.1)
            started = time.monotonic()
            await client.ping()
            slow = time.monotonic() - started
            redis_proxy.restore()
            started = time.monotonic()
            await client.ping()
            fast = time.monotonic() - started
    finally:
        await client.aclose()
    assert slow >= 0.2  # one chunk each way
    assert fast < 0.1


async def test_blackhole_makes_a_bounded_query_time_out(
    pg_proxy: FaultProxy, database_url: str
) -> None:
    conn = await _pg_connect(pg_proxy, database_url)
    try:
        pg_proxy.blackhole()
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(asyncio.TimeoutError) as info:
            await conn.fetchval("SELECT 1", timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert is_transient(info.value)
        # A new connection hangs in its handshake as well.
        with anyio.fail_after(5), pytest.raises(asyncio.TimeoutError):
            await _pg_connect(pg_proxy, database_url, connect_timeout=0.3)
    finally:
        conn.terminate()
    pg_proxy.restore()
    with anyio.fail_after(5):
        conn = await _pg_connect(pg_proxy, database_url)
        try:
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await conn.close()


async def test_blackholed_redis_times_out(redis_proxy: FaultProxy, redis_url: str) -> None:
    client = _redis(redis_proxy, redis_url, timeout=0.3)
    try:
        await client.ping()
        redis_proxy.blackhole()
        with anyio.fail_after(5), pytest.raises(redis_exc.TimeoutError) as info:
            await client.ping()
        assert is_transient(info.value)
    finally:
        await client.aclose()


# CPython 3.12.1 and 3.13.0 raise AttributeError from `writelines()` on a transport the peer
# already closed (the selector loop is gone); later patch releases raise a connection error.
REDIS_CUT_ERRORS: tuple[type[BaseException], ...] = (
    (redis_exc.ConnectionError, AttributeError)
    if sys.version_info[:3] in {(3, 12, 1), (3, 13, 0)}
    else (redis_exc.ConnectionError,)
)


async def test_cut_fails_the_next_command_and_restore_recovers(
    pg_proxy: FaultProxy, redis_proxy: FaultProxy, database_url: str, redis_url: str
) -> None:
    conn = await _pg_connect(pg_proxy, database_url)
    client = _redis(redis_proxy, redis_url)
    try:
        with anyio.fail_after(10):
            assert await conn.fetchval("SELECT 1") == 1
            assert await client.ping() is True
            pg_proxy.cut()
            redis_proxy.cut()
            with pytest.raises(asyncpg.ConnectionDoesNotExistError) as pg_error:
                await conn.fetchval("SELECT 1")
            assert is_transient(pg_error.value), repr(pg_error.value)
            with pytest.raises(REDIS_CUT_ERRORS) as redis_error:
                await client.ping()
            assert is_transient(redis_error.value), repr(redis_error.value)
            # New connections are refused while cut.
            with pytest.raises(ConnectionResetError) as connect_error:
                await _pg_connect(pg_proxy, database_url)
            assert is_transient(connect_error.value), repr(connect_error.value)
            with pytest.raises(REDIS_CUT_ERRORS):
                await client.ping()

            pg_proxy.restore()
            redis_proxy.restore()
            assert await client.ping() is True  # the client reconnects by itself
            fresh = await _pg_connect(pg_proxy, database_url)
            try:
                assert await fresh.fetchval("SELECT 3") == 3
            finally:
                await fresh.close()
    finally:
        conn.terminate()
        await client.aclose()


async def test_reset_all_drops_open_connections_only(
    redis_proxy: FaultProxy, redis_url: str
) -> None:
    client = _redis(redis_proxy, redis_url)
    try:
        with anyio.fail_after(5):
            await client.ping()
            redis_proxy.reset_all()
            with pytest.raises(redis_exc.ConnectionError):
                await client.ping()
            assert await client.ping() is True
    finally:
        await client.aclose()


async def test_exit_closes_everything(database_url: str, redis_url: str) -> None:
    before = asyncio.all_tasks()
    async with FaultProxy.for_url(redis_url) as proxy:
        clients = [_redis(proxy, redis_url) for _ in range(3)]
        with anyio.fail_after(5):
            for client in clients:
                await client.ping()
        assert proxy.active_connections == 3
        proxy.blackhole()
        # A connection accepted while blackholed is part of what must be closed.
        sink = socket.create_connection(("127.0.0.1", proxy.port))
        with anyio.fail_after(5):
            for _ in range(500):
                if proxy.active_connections == 4:
                    break
                await anyio.sleep(0.01)
        assert proxy.active_connections == 4
        port = proxy.port
    sink.close()
    for client in clients:
        await client.aclose()
    assert proxy.active_connections == 0
    assert asyncio.all_tasks() == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert urlsplit(proxy.url_for(redis_url)).port == port


async def test_unreachable_target_resets_clients(redis_url: str) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
    try:
        async with FaultProxy("127.0.0.1", holder.getsockname()[1]) as proxy:
            client = _redis(proxy, redis_url)
            try:
                with anyio.fail_after(5), pytest.raises(redis_exc.ConnectionError) as info:
                    await client.ping()
            finally:
                await client.aclose()
        assert is_transient(info.value)
    finally:
        holder.close()
