"""A loopback proxy in front of PostgreSQL that counts round trips on the wire.

Every message a client sends is parsed (frontend protocol v3). A round trip ends where the
client must wait for the server: a simple `Query` ('Q'), a `Sync` ('S') closing an extended
query, or a `Flush` ('H'). Counting those, rather than logging statements, also catches the
statements a driver sends on its own: `prepare()` on a cache miss, BEGIN/COMMIT, a pre-ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator

__all__ = ["WireCounter", "counting_proxy"]

_UNTYPED_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest
_WAITS = {b"Q": "query", b"S": "sync", b"H": "flush"}


class WireCounter:
    """Messages seen from clients, by type; `round_trips` sums the ones that wait."""

    def __init__(self) -> None:
        self.messages: Counter[bytes] = Counter()
        self.queries: list[str] = []

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.messages.clear()
        self.queries.clear()

    @property
    def round_trips(self) -> int:
        """Messages after which the client waits for the server."""
        return sum(self.messages[t] for t in _WAITS)

    def describe(self, per: int = 1) -> str:
        """Round trips and their kinds, per `per` operations."""
        kinds = ", ".join(
            f"{name} {self.messages[t] / per:g}" for t, name in _WAITS.items() if self.messages[t]
        )
        return f"{self.round_trips / per:g} ({kinds})"


async def _client_to_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: WireCounter
) -> None:
    started = False
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        writer.write(chunk)
        buf += chunk
        while True:
            if not started:
                if len(buf) < 8:
                    break
                (length,) = struct.unpack("!I", buf[:4])
                if len(buf) < length:
                    break
                (code,) = struct.unpack("!I", buf[4:8])
                started = code not in _UNTYPED_REQUESTS
                buf = buf[length:]
                continue
            if len(buf) < 5:
                break
            kind = buf[:1]
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            counter.messages[kind] += 1
            if kind == b"Q":
                counter.queries.append(buf[5 : 1 + length].rstrip(b"\0").decode(errors="replace"))
            elif kind == b"P":  # Parse: name\0 query\0 ...
                body = buf[5 : 1 + length]
                _, _, rest = body.partition(b"\0")
                counter.queries.append(rest.partition(b"\0")[0].decode(errors="replace"))
            buf = buf[1 + length :]
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def _server_to_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        writer.write(chunk)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@contextlib.asynccontextmanager
async def counting_proxy(
    host: str = "127.0.0.1", port: int = 5432
) -> AsyncIterator[tuple[int, WireCounter]]:
    """Listen on a free loopback port, forward to `host:port`; yields (port, counter)."""
    counter = WireCounter()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(host, port)
        pumps = [
            asyncio.ensure_future(_client_to_server(c_reader, s_writer, counter)),
            asyncio.ensure_future(_server_to_client(s_reader, c_writer)),
        ]
        tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                tasks.discard(task)
            for w in (c_writer, s_writer):
                with contextlib.suppress(OSError):
                    w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    listen_port = server.sockets[0].getsockname()[1]
    try:
        yield listen_port, counter
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
