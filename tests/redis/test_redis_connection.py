"""The client's connections: redis-py's socket timeout, kept, without a timer or a task per
command. The read timeout tests run on redis-py's own connection class too: both must behave
alike. The write timeout holds where redis-py's may not: on some Python versions (3.12.1)
`writelines` never pauses the transport, so redis-py's drain returns with 64 MiB still unsent.

A read is kept waiting by a BLPOP on a key nobody pushes to; a write by a server that answers
the connection's handshake and then stops reading.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.config import Settings
from core.redis_client import RedisManager
from core.redis_client.connection import (
    LeanConnection,
    LeanSSLConnection,
    LeanUnixDomainSocketConnection,
)
from core.redis_client.pool import WaitingConnectionPool

pytestmark = pytest.mark.anyio

TIMEOUT = 0.3
"""The socket timeout of these tests."""
LATE = 2.0
"""Far beyond TIMEOUT: a bound that fires this late did not work."""

CLASSES = pytest.mark.parametrize("cls", [Connection, LeanConnection], ids=["redis-py", "lean"])


def _address(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", LeanConnection),
        ("rediss://127.0.0.1:6380/0", LeanSSLConnection),
        ("unix:///run/redis.sock", LeanUnixDomainSocketConnection),
    ],
)
def test_the_client_pool_uses_the_lean_class_of_each_scheme(
    url: str, expected: type[AbstractConnection]
) -> None:
    manager = RedisManager(Settings(_env_file=None, redis={"url": url}))
    pool = manager.client.connection_pool
    assert pool.connection_class is expected
    assert issubclass(expected, (Connection, SSLConnection, UnixDomainSocketConnection))
    stock = {LeanConnection: Connection, LeanSSLConnection: SSLConnection}
    assert issubclass(expected, stock.get(expected, UnixDomainSocketConnection))


def test_a_connection_class_of_ones_own_is_kept() -> None:
    class Mine(Connection):
        pass

    pool = WaitingConnectionPool(connection_class=Mine, host="127.0.0.1")
    assert pool.connection_class is Mine


@CLASSES
async def test_a_reply_later_than_the_socket_timeout_raises_and_drops_the_connection(
    cls: type[Connection], redis_url: str, key_prefix: str
) -> None:
    host, port = _address(redis_url)
    conn = cls(host=host, port=port, socket_timeout=30)
    try:
        await conn.connect()
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"
        conn.socket_timeout = TIMEOUT  # as redis-py does to relax or restore it
        await conn.send_command("BLPOP", f"{key_prefix}never", 30)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"), anyio.fail_after(LATE):
            await conn.read_response()
        assert TIMEOUT * 0.9 <= time.monotonic() - started < LATE
        assert not conn.is_connected  # its reply may still come: never reuse it
        # The connection reconnects on its next command, with a bound that still works.
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"
    finally:
        await conn.disconnect()


@asynccontextmanager
async def _waiting_for_a_reply(
    cls: type[Connection], redis_url: str, key_prefix: str, socket_timeout: float
) -> AsyncIterator[Connection]:
    """A connection that has sent a BLPOP nobody will answer."""
    host, port = _address(redis_url)
    conn = cls(host=host, port=port, socket_timeout=socket_timeout)
    try:
        await conn.connect()
        await conn.send_command("BLPOP", f"{key_prefix}never", 30)
        yield conn
    finally:
        await conn.disconnect()


@CLASSES
async def test_a_timed_out_read_told_not_to_disconnect_keeps_the_connection(
    cls: type[Connection], redis_url: str, key_prefix: str
) -> None:
    async with _waiting_for_a_reply(cls, redis_url, key_prefix, TIMEOUT) as conn:
        with pytest.raises(RedisTimeoutError), anyio.fail_after(LATE):
            await conn.read_response(disconnect_on_error=False)
        assert conn.is_connected


async def test_an_outer_cancellation_is_not_reported_as_a_timeout(
    redis_url: str, key_prefix: str
) -> None:
    async with _waiting_for_a_reply(LeanConnection, redis_url, key_prefix, LATE) as conn:
        read = asyncio.ensure_future(conn.read_response())
        await asyncio.sleep(TIMEOUT)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert not conn.is_connected


BIG = 1 << 20
"""A command with an argument this long is one the deaf server stops reading at."""


@pytest.fixture
async def deaf_server() -> AsyncIterator[tuple[str, int]]:
    """A server that answers +OK to short commands (the handshake) and stops reading at the
    first long one."""
    accepted: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while True:
            header = await reader.readline()  # *<count>
            if not header:
                return
            for _ in range(int(header[1:])):
                length = int((await reader.readline())[1:])  # $<length>
                if length > BIG:
                    await asyncio.Event().wait()  # never read again
                await reader.readexactly(length + 2)
            writer.write(b"+OK\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()


async def test_a_write_the_server_never_takes_raises_and_drops_the_connection(
    deaf_server: tuple[str, int],
) -> None:
    host, port = deaf_server
    conn = LeanConnection(host=host, port=port, socket_timeout=TIMEOUT, protocol=2)  # +OK
    try:
        await conn.connect()
        big = conn.pack_command("SET", "k", b"x" * (64 * BIG))  # more than the socket buffers
        started = time.monotonic()
        with (
            pytest.raises(RedisTimeoutError, match="Timeout writing to socket"),
            anyio.fail_after(LATE),
        ):
            await conn.send_packed_command(big, check_health=False)
        assert TIMEOUT * 0.9 <= time.monotonic() - started < LATE
        assert not conn.is_connected
    finally:
        await conn.disconnect()


def _counting(monkeypatch: pytest.MonkeyPatch, loop: Any, name: str) -> list[int]:
    calls = [0]
    original: Callable[..., Any] = getattr(loop, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, name, counted)
    return calls


@pytest.fixture
async def lean_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    manager = RedisManager(
        Settings(_env_file=None, redis={"url": redis_url, "socket_timeout": TIMEOUT})
    )
    async with manager:
        await manager.client.ping()  # connected and handshaken before anything is counted
        yield manager.client


async def test_commands_the_socket_takes_at_once_start_no_task(
    lean_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = _counting(monkeypatch, asyncio.get_running_loop(), "create_task")
    for i in range(200):
        await lean_client.set(f"{key_prefix}k", i)
        assert await lean_client.get(f"{key_prefix}k") == str(i).encode()
    assert tasks[0] == 0


async def test_sequential_commands_share_one_read_timer(
    lean_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    timers = _counting(monkeypatch, asyncio.get_running_loop(), "call_at")
    started = time.monotonic()
    commands = 200
    for i in range(commands):
        await lean_client.set(f"{key_prefix}k", i)
    if sys.version_info >= (3, 11):
        # One timer armed per connection, and again each time it fires (once a socket timeout).
        assert timers[0] <= 1 + (time.monotonic() - started) / TIMEOUT + 1
    else:
        # On 3.10 reads keep redis-py's own bound, a timer each; writes still arm none
        # (redis-py's arm one per command too).
        assert commands <= timers[0] <= commands + 2
