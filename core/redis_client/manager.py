"""Redis through redis-py's asyncio client: one bounded pool, explicit retries, ping and close."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.config import Settings, get_settings
from core.errors import ResourceClosedError
from core.redis_client.pool import WaitingConnectionPool
from core.redis_client.topology import build_topology_client, is_topology_url
from core.resilience import CircuitBreaker
from core.urls import redact_url

if TYPE_CHECKING:
    from core.cache import Cache
    from core.cache.hooks import MetricsHook

__all__ = ["RedisManager", "redis_manager"]

T = TypeVar("T")


class RedisManager:
    """Owns a Redis connection pool and client.

    Pass `client=` to use a client you built yourself; the manager then never closes it.
    """

    def __init__(self, settings: Settings | None = None, *, client: Redis | None = None) -> None:
        self._settings = settings
        self._client = client
        self._owns_client = client is None
        self._cache: Cache | None = None
        self._breaker: CircuitBreaker | None = None
        self.cache_metrics: MetricsHook | None = None
        """Receives cache events (hits, misses, errors...); set before first use of `cache`."""
        self._embedded: Any = None
        self._closed = False
        self._url_override: str | None = None
        # Set when the client is a Sentinel or Cluster client: it closes what that client opened.
        self._close_topology: Callable[[], Awaitable[None]] | None = None

    @property
    def settings(self) -> Settings:
        """The settings given, else the process-wide `get_settings()`."""
        # Not stored: the global instances follow `get_settings.cache_clear()` between runs.
        return self._settings if self._settings is not None else get_settings()

    @property
    def url(self) -> str:
        """The Redis URL without its password."""
        return self._url_override or self.settings.redis.url

    @property
    def safe_url(self) -> str:
        """The URL safe to show to people and logs."""
        return redact_url(self.url)

    def _build(self) -> Redis:
        if self._closed:
            raise ResourceClosedError("redis")
        if self.url == "embedded":
            raise RuntimeError("REDIS_URL=embedded: call `await manager.start()` first")
        if is_topology_url(self.url):
            built = build_topology_client(
                self.url, self.settings.redis, client_name=self.settings.app.name
            )
            self._close_topology = built.close
            return built.client
        cfg = self.settings.redis
        # redis-py does not retry by default: without this, the first command on a pooled
        # connection that the server closed while idle fails instead of reconnecting.
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), cfg.retry_attempts)
        pool = WaitingConnectionPool.from_url(
            self.url,
            password=cfg.password.get_secret_value() if cfg.password else None,
            max_connections=cfg.max_connections,
            timeout=cfg.pool_timeout,
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.socket_connect_timeout,
            health_check_interval=cfg.health_check_interval,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
            client_name=self.settings.app.name,
            # Secret query options (ssl_password) reach redis-py here, never through the URL.
            **cfg.secret_connection_kwargs(),
        )
        return Redis(connection_pool=pool)

    async def start(self) -> None:
        """Start an embedded server if configured, and build the client. Idempotent."""
        self._closed = False
        if self._client is not None:
            return
        if self.settings.redis.is_embedded:
            from core.embedded import start_embedded_redis

            self._embedded, self._url_override = await start_embedded_redis(self.settings)
        self._client = self._build()

    @property
    def client(self) -> Redis:
        """The shared, pool-backed client (safe to use from many tasks at once)."""
        if self._client is None:
            self._client = self._build()
        return self._client

    @asynccontextmanager
    async def get_client_context(self) -> AsyncIterator[Redis]:
        """The seed's form of `client`, as a context manager (`async with
        r.get_client_context() as c:`); connections return to the pool per command."""
        yield self.client

    @property
    def cache(self) -> Cache:
        """The cache built on this client with the configured prefix and cache settings."""
        if self._cache is None:
            from core.cache import Cache

            self._cache = Cache(
                self.client,
                prefix=self.settings.redis.key_prefix,
                settings=self.settings.cache,
                breaker=self.breaker,
                metrics=self.cache_metrics,
            )
        return self._cache

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding Redis: while open, the cache skips Redis entirely."""
        if self._breaker is None:
            self._breaker = CircuitBreaker.from_settings("redis", self.settings.resilience)
        return self._breaker

    async def get_or_set(
        self, key: str, callback: Callable[[], Awaitable[T]], ttl: float | None = None
    ) -> T:
        """The seed's form of `cache.get_or_set`: the cached value of `key`, or `callback`'s
        result, cached for `ttl` seconds. `cache` offers the rest (types, groups, options)."""
        return await self.cache.get_or_set(key, callback, ttl=ttl)

    async def ping(self) -> float:
        """PING the server; return the round-trip time in seconds."""
        start = time.perf_counter()
        await self.client.ping()
        return time.perf_counter() - start

    async def server_version(self) -> str:
        """The server's version (`INFO server`)."""
        info = await self.client.info("server")
        if "redis_version" not in info:
            # A cluster answers with one INFO per node, keyed by node.
            info = next((v for v in info.values() if isinstance(v, dict)), {})
        return str(info.get("redis_version", "unknown"))

    async def close(self) -> None:
        """Close the client and its pool if this manager built them."""
        cache, self._cache = self._cache, None
        client = self._client
        if self._owns_client:
            self._closed = True
        try:
            if cache is not None:
                await cache.aclose()
            if client is not None and self._owns_client:
                self._client = None
                close_topology, self._close_topology = self._close_topology, None
                if close_topology is not None:
                    await close_topology()
                else:
                    await client.aclose()
                    await client.connection_pool.disconnect()
        finally:
            if self._embedded is not None:
                embedded, self._embedded, self._url_override = self._embedded, None, None
                await embedded.aclose()

    async def __aenter__(self) -> RedisManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"RedisManager(url={self.safe_url!r}, started={self._client is not None})"


redis_manager = RedisManager()
"""The process-wide manager built from `get_settings()`, for services that prefer a global."""
