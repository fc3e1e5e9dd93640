"""Coherence of the local tier: one Redis connection receiving invalidations of the cache's keys.

The connection turns on server-assisted client-side caching in broadcast mode for the cache's
key prefix (`CLIENT TRACKING ON REDIRECT <own id> BCAST PREFIX <prefix>`) and subscribes to
`__redis__:invalidate`: Redis then names every key under the prefix that any client modifies,
deletes or lets expire, and sends a null for FLUSHDB/FLUSHALL. The tier is live only between a
confirmed subscription and the first sign of its loss (an error, a closed socket, or no answer
to a PING within `heartbeat` after `heartbeat` of silence); on either edge it is flushed, so
nothing read while invalidations could have been missed is ever served.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import suppress
from typing import Any

import redis.asyncio as aioredis

from core._aio import deadline
from core.cache.local_tier import LocalTier

__all__ = ["InvalidationListener", "tracking_pool"]

log = logging.getLogger(__name__)

CHANNEL = b"__redis__:invalidate"
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0


def tracking_pool(client: aioredis.Redis) -> aioredis.ConnectionPool:
    """The pool whose connection settings the listener copies; refuses clients without one."""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, aioredis.ConnectionPool):
        raise ValueError(
            "the local cache tier needs a client with one connection pool (a single Redis "
            f"server or Sentinel); {type(client).__name__} has none (Redis Cluster is not "
            "supported: invalidations would have to be tracked on every node)"
        )
    return pool


class InvalidationListener:
    """Keeps `tier` coherent with Redis for the keys under `prefix`, reconnecting as needed.

    Keys under `flush_prefix` (group versions) flush the whole tier: every entry of a group
    depends on its version key, and group invalidations are rare.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        tier: LocalTier,
        *,
        prefix: str,
        flush_prefix: str,
        heartbeat: float,
    ) -> None:
        self._pool = tracking_pool(client)
        self._tier = tier
        self._prefix = prefix
        self._flush_prefix = flush_prefix.encode()
        self._heartbeat = heartbeat
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        """Set exactly while the tier is live."""
        self.connections = 0
        """Subscriptions established so far (a reconnect adds one)."""
        self.client_id: int | None = None
        """Redis's id of the current (or last) invalidation connection."""

    @property
    def live(self) -> bool:
        """Whether invalidations are being received (and so the tier may serve)."""
        return self._tier.live

    def start(self) -> None:
        """Start listening in the background (idempotent; needs a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_live(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the subscription; whether it is live."""
        with suppress(TimeoutError):
            async with deadline(timeout):
                await self._ready.wait()
        return self._tier.live

    async def aclose(self) -> None:
        """Stop listening, close the connection and empty the tier."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self._ready.clear()
        self._tier.live = False
        self._tier.flush()

    def _connection(self) -> Any:
        # The pool's own settings (address, TLS, credentials, timeouts, client name), in RESP2
        # (invalidations arrive as pub/sub messages) with raw bytes and no health-check PINGs
        # of redis-py's own, which expect a reply shape that subscribe mode does not give.
        kwargs = {
            k: v for k, v in self._pool.connection_kwargs.items() if not k.startswith("maint")
        }
        kwargs.update(protocol=2, decode_responses=False, health_check_interval=0)
        return self._pool.connection_class(**kwargs)

    async def _run(self) -> None:
        delay = _RETRY_FIRST
        while True:
            was_live = False
            try:
                was_live = await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cache: invalidation connection lost (%r); the local tier is off until it "
                    "is back",
                    exc,
                )
            finally:
                self._tier.live = False
                self._tier.flush()
            if was_live:
                delay = _RETRY_FIRST
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _RETRY_MAX)

    async def _serve(self) -> bool:
        """One connection's life: subscribe, then apply invalidations until it fails."""
        conn = self._connection()
        try:
            async with deadline(max(self._heartbeat, 1.0) * 5):
                await conn.connect()
                await conn.send_command("CLIENT", "ID")
                own_id = self.client_id = await conn.read_response()
                await conn.send_command(
                    "CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", "PREFIX", self._prefix
                )
                _expect_ok(await conn.read_response())
                await conn.send_command("SUBSCRIBE", CHANNEL)
                reply = await conn.read_response()
                if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                    raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")
            # Whatever the tier held was kept while invalidations could have been missed.
            self._tier.flush()
            self._tier.live = True
            self.connections += 1
            self._ready.set()
            probing = False
            while True:
                message = await conn.read_response(timeout=self._heartbeat)
                if message is None:
                    if probing:
                        raise TimeoutError(f"no answer to PING within {self._heartbeat} s")
                    await conn.send_command("PING")
                    probing = True
                    continue
                probing = False
                self._apply(message)
        finally:
            self._ready.clear()
            self._tier.live = False
            self._tier.flush()
            with suppress(Exception):
                await conn.disconnect(nowait=True)

    def _apply(self, message: Any) -> None:
        if not (isinstance(message, list) and len(message) == 3 and message[0] == b"message"):
            if isinstance(message, Exception):
                raise message
            return  # the PONG of a probe
        keys = message[2]
        if keys is None or any(key.startswith(self._flush_prefix) for key in keys):
            self._tier.flush()
        else:
            self._tier.invalidate(key.decode("utf-8", "replace") for key in keys)


def _expect_ok(reply: Any) -> None:
    if isinstance(reply, Exception):
        raise reply
    if reply not in (b"OK", "OK"):
        raise ConnectionError(f"unexpected reply to CLIENT TRACKING: {reply!r}")
