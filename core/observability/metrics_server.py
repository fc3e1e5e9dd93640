"""`/metrics` on a port of its own, for operators who keep it off the public one.

A deliberately small HTTP/1.1 server on asyncio: it answers `GET <path>` with the exposition and
404/405 otherwise, reads at most a bounded request head within a bounded time, and closes every
connection after one answer. It runs in the service's own event loop and stops with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from core._aio import deadline
from core.observability.metrics import Metrics, metrics_response

__all__ = ["MetricsServer"]

log = logging.getLogger("dualcore.metrics")

_MAX_HEAD = 8192
_READ_TIMEOUT = 5.0


class MetricsServer:
    """Serves `metrics` at `http://host:port<path>` between `start()` and `close()`."""

    def __init__(self, metrics: Metrics, *, host: str, port: int, path: str = "/metrics") -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.path = path
        self._server: asyncio.Server | None = None

    @property
    def safe_url(self) -> str:
        """Where the metrics are served."""
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        """Listen; a port that is taken fails start-up with the address in the error."""
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._answer, self.host, self.port, limit=_MAX_HEAD
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics server cannot listen on {self.safe_url}: {exc.strerror}"
            ) from None
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def ping(self) -> float:
        """0.0 while listening (a metrics server has nothing remote to check)."""
        if self._server is None or not self._server.is_serving():
            raise RuntimeError("metrics server is not listening")
        return 0.0

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            if sys.version_info >= (3, 13):
                # Before 3.13, connections already accepted end by themselves (one answer each).
                server.close_clients()
            await server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with deadline(_READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_plain(431, b"request header fields too large\n"))
                await writer.drain()
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            method, _, rest = head.partition(b" ")
            target = rest.partition(b" ")[0].partition(b"?")[0]
            if target != self.path.encode():
                writer.write(_plain(404, b"not found\n"))
            elif method not in (b"GET", b"HEAD"):
                writer.write(_plain(405, b"method not allowed\n", "Allow: GET, HEAD\r\n"))
            else:
                body, content_type = metrics_response(self.metrics)
                answer = _response(200, content_type, body)
                writer.write(answer[: len(answer) - len(body)] if method == b"HEAD" else answer)
            await writer.drain()
        except OSError:
            pass  # the scraper went away
        except Exception:
            log.exception("metrics server: answering a scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


def _response(status: int, content_type: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


def _plain(status: int, body: bytes, extra: str = "") -> bytes:
    return _response(status, "text/plain; charset=utf-8", body, extra)
