"""A small asyncio TCP proxy that injects network faults between a client and a real server.

    async with FaultProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url_for(database_url)     # same URL, host and port of the proxy
        proxy.delay(0.2)                      # every chunk waits 0.2 s
        proxy.blackhole()                     # a hung server: bytes are read, never forwarded
        proxy.cut()                           # connections reset; new ones reset on accept
        proxy.restore()                       # plain pass-through again

Faults apply at once to open connections and to new ones. Leaving the block closes the listener,
resets every connection and awaits every task the proxy started.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["both", "upstream", "downstream"]

_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379}


def _reset_socket(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Reset the stream's connection and drop whatever it still had to send."""
    sock = writer.get_extra_info("socket")
    if sock is not None and not writer.transport.is_closing():
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Stream: TypeAlias = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Link:
    """One accepted client socket, its stream once wrapped, and its upstream connection (none
    for a connection accepted while blackholed)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.client: Stream | None = None
        self.upstream: Stream | None = None

    def abort(self) -> None:
        if self.client is not None:
            _abort(self.client[1])
        elif self.sock.fileno() != -1:
            _reset_socket(self.sock)
        if self.upstream is not None:
            _abort(self.upstream[1])


class FaultProxy:
    """TCP proxy on 127.0.0.1:<free port> in front of `target_host:target_port`."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._delay = {"upstream": 0.0, "downstream": 0.0}
        self._blackholed = False
        self._cut = False

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        """A proxy in front of the server that `url` (postgresql://, redis://) points at."""
        parts = urlsplit(url)
        scheme = parts.scheme.split("+")[0]
        port = parts.port or _DEFAULT_PORTS.get(scheme, 5432)
        return cls(parts.hostname or "127.0.0.1", port)

    def url_for(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's (user, path and query kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += f"{self.host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def active_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._links)

    # --- faults ----------------------------------------------------------------------------

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Hold every chunk for `seconds` before forwarding it (`upstream` = client to server)."""
        for side in ("upstream", "downstream"):
            if direction in ("both", side):
                self._delay[side] = seconds

    def blackhole(self) -> None:
        """Behave like a hung server: accept and read everything, forward and answer nothing."""
        self._blackholed = True

    def cut(self) -> None:
        """Reset every open connection and every new one until `restore()`."""
        self._cut = True
        self.reset_all()

    def reset_all(self) -> None:
        """Reset every open connection; new connections are served as before."""
        for link in list(self._links):
            link.abort()

    def restore(self) -> None:
        """Back to plain pass-through. Connections accepted while blackholed never reached the
        server, so they are reset to let their clients reconnect."""
        self._cut = False
        self._blackholed = False
        self._delay = {"upstream": 0.0, "downstream": 0.0}
        for link in list(self._links):
            if link.upstream is None:
                link.abort()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setblocking(False)
            listener.bind((self.host, 0))
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_task = asyncio.create_task(self._accept_loop(listener))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, reset every connection and await every task."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.reset_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A handler cancelled before it first ran never wrapped its socket.
        self.reset_all()
        self._links.clear()

    # --- forwarding ------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            self.accepted += 1
            if self._cut:
                _reset_socket(sock)
                continue
            link = _Link(sock)
            self._links.add(link)
            task = asyncio.create_task(self._handle(link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, link: _Link) -> None:
        try:
            link.client = await asyncio.open_connection(sock=link.sock)
            if not self._blackholed:
                link.upstream = await asyncio.open_connection(self.target_host, self.target_port)
            await self._pump_both(link)
        except (OSError, asyncio.IncompleteReadError):
            pass  # either side went away: the other is reset below
        finally:
            link.abort()
            self._links.discard(link)

    async def _pump_both(self, link: _Link) -> None:
        assert link.client is not None
        reader, writer = link.client
        if link.upstream is None:
            await self._pump(reader, None, "upstream")
            return
        up_reader, up_writer = link.upstream
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, "upstream")),
            asyncio.create_task(self._pump(up_reader, writer, "downstream")),
        ]
        try:
            # Both directions end on EOF; an error on either ends the link.
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, side: str
    ) -> None:
        while True:
            data = await src.read(_CHUNK)
            if not data:
                if dst is not None and dst.can_write_eof() and not dst.is_closing():
                    dst.write_eof()
                return
            if self._delay[side]:
                await asyncio.sleep(self._delay[side])
            if self._blackholed or dst is None:
                continue
            dst.write(data)
            await dst.drain()
