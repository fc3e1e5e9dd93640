"""Call ASGI apps in-process: no server, no sockets, the real database and Redis behind them.

Used where the HTTP layer would only add noise: per-request CPU cost of the example apps and
their anchors, the observability stack on the example app, and memory over many requests.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from _common import Dataset

from core.config import get_settings
from core.testing import asgi_lifespan

HEADERS = [(b"host", b"bench"), (b"accept", b"application/json"), (b"user-agent", b"bench/1")]


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(HEADERS),
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }


class Driver:
    """Sends GET requests to one app, rotating over `paths`, checking every status is 200."""

    def __init__(self, app: Any, paths: Sequence[str], state: dict[str, Any]) -> None:
        self.app = app
        # An index, not itertools.cycle: a cycle keeps a second copy of everything it has
        # yielded, which would itself grow during a memory run.
        self._paths = paths
        self._next = 0
        self._state = state
        self._request = {"type": "http.request", "body": b"", "more_body": False}

    async def one(self) -> None:
        """One request; raises unless it was answered 200."""
        status = 0

        async def receive() -> dict[str, Any]:
            return self._request

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        i = self._next
        self._next = i + 1 if i + 1 < len(self._paths) else 0
        scope = _scope(self._paths[i])
        scope["state"] = dict(self._state)
        await self.app(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"{scope['path']} answered {status}")

    async def run(self, n: int, concurrency: int = 1) -> float:
        """`n` requests by `concurrency` tasks; returns process CPU seconds per request."""
        start = time.process_time()
        if concurrency == 1:
            for _ in range(n):
                await self.one()
        else:

            async def worker(count: int) -> None:
                for _ in range(count):
                    await self.one()

            share, extra = divmod(n, concurrency)
            await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
        return (time.process_time() - start) / n


AppFactory = Callable[[], Any]


def app_factories(ds: Dataset) -> dict[str, AppFactory]:
    """The benchmark apps by name, built in this process against `ds`.

    The anchors read the environment, so it is set here for them (and for `Core()`, whose
    settings are read again).
    """
    os.environ.update(ds.env())
    get_settings.cache_clear()
    from baseline_apps import APPS

    return dict(APPS)


@asynccontextmanager
async def running(factory: AppFactory, paths: Sequence[str]) -> AsyncIterator[Driver]:
    """Build the app, run its lifespan around the block, yield a driver for it."""
    app = factory()
    async with asgi_lifespan(app) as state:
        yield Driver(app, paths, state)
