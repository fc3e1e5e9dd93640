"""The cache: read-through `get_or_set` over a Redis client it does not own.

A hit costs one round trip (GET, or MGET with the group version). A miss is filled once per
process (single-flight task) and once across processes (a Redis lock with a token-checked release
and a TTL; other processes poll for the value for at most `lock_wait`, then load themselves).
Hot entries are refreshed early with probability rising towards expiry (XFetch), by one caller
while the others keep reading the still valid entry. Every Redis call is bounded by
`operation_timeout`; when Redis is down, slow or skipped by an open breaker, reads and fills fail
open: the loader's value is returned and not cached.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from functools import partial
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from anyio import sleep
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from core._aio import SharedTimeout
from core.cache.codec import Codec, codec_for
from core.cache.envelope import normalise_version, pack, unpack
from core.cache.errors import CacheUnavailable
from core.cache.hooks import CacheBreaker, CacheEvent, CacheStats, MetricsHook, admission
from core.cache.keys import Key, KeySpace
from core.cache.local_tier import LocalTier
from core.cache.scripts import DELETE, ENSURE_VERSION, RELEASE, STORE_RELEASE
from core.cache.tracking import InvalidationListener, tracking_pool
from core.config import CacheSettings
from core.resilience.errors import is_closed_transport_error

__all__ = ["Cache"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_HIT, _MISS, _DOWN, _REFRESH = 0, 1, 2, 3
_HELD: Final = "\x00held"
"""`_acquire` result when another filler holds the lock (never a valid token)."""
# Cluster routing failures (no node for a slot, a stale map...) are not RedisErrors.
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
_RAW: dict[str, Any] = {"NEVER_DECODE": []}
"""Read entries as bytes even from a client built with `decode_responses=True`."""
_MAX_TTL = 10 * 365 * 86400.0
_POLL_FIRST = 0.005
_POLL_MAX = 0.05

_Lookup = tuple[int, Any, bytes | None]
_Fetched = tuple[bytes | None, bytes | None] | None
"""(raw entry, current group version) as read, or None when Redis could not be asked."""
_NOT_HELD: Final = object()
"""`_local_hit` result when the local tier cannot answer."""


def _checked_ttl(ttl: float) -> float:
    if not 0 < ttl <= _MAX_TTL:  # also refuses NaN
        raise ValueError(f"cache ttl must be in (0, {_MAX_TTL}] seconds, got {ttl!r}")
    return ttl


def _is_wrongtype(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


class _Retry(Exception):
    """Tells readers sharing a fetch that the caller doing it was cancelled."""


class _Flight:
    """One in-process fill of a key; waiters await its task through `asyncio.shield`."""

    __slots__ = ("early", "store", "task")

    def __init__(self, early: bool = False) -> None:
        self.early = early
        """An early refresh: the entry is still valid, so readers need not wait for it."""
        self.store = True
        """Cleared by `delete` so a fill that started before it does not write back."""
        self.task: asyncio.Task[Any]


class Cache:
    """Read-through cache on an existing `redis.asyncio.Redis` client (never closed here).

    `prefix` goes in front of every key (typically `RedisSettings.key_prefix`), then the
    settings' namespace. `breaker` is consulted before each Redis call; `metrics` receives every
    counter increment. Use `async with Cache(...)` or `aclose()` to stop fills still running.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "",
        settings: CacheSettings | None = None,
        codec: Codec | None = None,
        breaker: CacheBreaker | None = None,
        metrics: MetricsHook | None = None,
    ) -> None:
        self.settings = settings if settings is not None else CacheSettings.model_validate({})
        self.client = client
        self.keys = KeySpace(prefix, self.settings.namespace, self.settings.max_key_length)
        self.codec = codec if codec is not None else codec_for(self.settings.codec)
        self.stats = CacheStats()
        self._admission = None if breaker is None else admission(breaker)
        self._metrics = metrics
        self._codec_id = self.codec.codec_id
        self._decode = self.codec.decode
        self._enabled = self.settings.enabled
        self._default_ttl = self.settings.default_ttl
        self._bounded = SharedTimeout(self.settings.operation_timeout)
        self._beta = self.settings.early_refresh
        self._lock_px = max(1, int(self.settings.lock_ttl * 1000))
        self._flights: dict[str, _Flight] = {}
        self._reads: dict[str, list[asyncio.Future[_Fetched]]] = {}
        self._release = client.register_script(RELEASE)
        self._store_release = client.register_script(STORE_RELEASE)
        self._ensure_version = client.register_script(ENSURE_VERSION)
        self._delete = client.register_script(DELETE)
        self._local_default = self.settings.local_tier
        if self._local_default:
            tracking_pool(client)  # refuse an unsupported client at start-up, not on first use
        self._tier: LocalTier | None = None
        self._listener: InvalidationListener | None = None

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel fills still running and wait for them, stop the local tier's listener; the
        client stays open."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            await self._listener.aclose()

    @property
    def local_tier(self) -> LocalTier | None:
        """The in-process tier, once a call has used it (None before, or if never enabled)."""
        return self._tier

    @property
    def invalidations(self) -> InvalidationListener | None:
        """The listener keeping the local tier coherent (None until the tier is first used)."""
        return self._listener

    def _tier_for(self, local: bool | None) -> LocalTier | None:
        """The local tier if this call uses it, started on first use."""
        if not (self._local_default if local is None else local):
            return None
        tier = self._tier
        if tier is None:
            cfg = self.settings
            tier = LocalTier(
                max_entries=cfg.local_max_entries, max_bytes=cfg.local_max_bytes, ttl=cfg.local_ttl
            )
            self._listener = InvalidationListener(
                self.client,
                tier,
                prefix=self.keys.base,
                flush_prefix=self.keys.base + "$v:",
                heartbeat=cfg.local_heartbeat,
            )
            self._tier = tier
        if self._listener is not None:
            self._listener.start()
        return tier

    def _forget_locally(self, vkey: str | None) -> None:
        """Drop `vkey` (None: everything) from the local tier after a write of this process.

        Redis announces the write too, but only after the caller has its answer: without this,
        a read here right after its own write could still be served the old value.
        """
        if self._tier is not None:
            if vkey is None:
                self._tier.flush()
            else:
                self._tier.invalidate((vkey,))

    # --- public API ----------------------------------------------------------------------------

    def redis_key(self, key: Key, *, group: str | None = None) -> str:
        """The Redis key an entry is stored under (for inspection and tests)."""
        return self.keys.value_key(self.keys.body(key, group))

    async def get_or_set(
        self,
        key: Key,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None = None,
        *,
        type_: Any = None,
        group: str | None = None,
        local: bool | None = None,
    ) -> T:
        """The cached value of `key`, or `await loader()` stored for `ttl` seconds.

        `type_` validates cached values back into that type (model, dataclass, `list[int]`...).
        Concurrent misses share one loader call, and so one result object: treat it as read-only.
        A waiter's cancellation never cancels the load. Loader exceptions propagate to every
        waiter and nothing is cached. With Redis down, slow or behind an open breaker, the
        loader's value is returned and not cached. `local` uses the in-process tier for this
        call (default: `CacheSettings.local_tier`); its hits are decoded afresh on every call.
        """
        ttl = self._default_ttl if ttl is None else _checked_ttl(ttl)
        if not self._enabled:
            return await self._run_loader(loader)
        body = self.keys.body(key, group)
        vkey = self.keys.base + body
        tier = self._tier_for(local)
        if tier is not None:
            found = self._local_hit(tier, vkey, type_)
            if found is not _NOT_HELD:
                return found  # type: ignore[no-any-return]
        gkey = self.keys.version_key(group) if group is not None else None
        flight = self._flights.get(vkey)
        if flight is not None and not flight.early:
            # A fill is running here, so the entry is missing: no need to ask Redis.
            return await asyncio.shield(flight.task)
        # `_lookup` written out: one coroutine layer fewer on the hit path.
        state, value, version = self._judge(await self._fetch(vkey, gkey, tier is not None), type_)
        if state == _HIT:
            return value  # type: ignore[no-any-return]
        if state == _REFRESH:
            return await self._refresh_early(body, vkey, gkey, loader, ttl, value, version)
        flight = self._flights.get(vkey)
        if flight is None:
            flight = self._start(
                vkey,
                lambda f: self._fill(
                    f, vkey, body, gkey, loader, ttl, type_, version, state == _MISS
                ),
            )
        return await asyncio.shield(flight.task)

    async def get(
        self,
        key: Key,
        default: Any = None,
        *,
        type_: Any = None,
        group: str | None = None,
        local: bool | None = None,
    ) -> Any:
        """The cached value of `key`, or `default` if absent, stale, undecodable or unreachable.

        `local` as in `get_or_set`."""
        if not self._enabled:
            return default
        vkey = self.keys.base + self.keys.body(key, group)
        tier = self._tier_for(local)
        if tier is not None:
            found = self._local_hit(tier, vkey, type_)
            if found is not _NOT_HELD:
                return found
        gkey = self.keys.version_key(group) if group is not None else None
        state, value, _ = await self._lookup(vkey, gkey, type_, early=False, keep=tier is not None)
        return value if state == _HIT else default

    async def set(
        self, key: Key, value: Any, ttl: float | None = None, *, group: str | None = None
    ) -> bool:
        """Store `value` for `ttl` seconds; False when Redis could not be reached (not stored)."""
        ttl = self._ttl(ttl)
        if not self._enabled:
            return False
        vkey = self.redis_key(key, group=group)
        version = b""
        if group is not None:
            current = await self._group_version(self.keys.version_key(group))
            if current is None:
                return False
            version = current
        return await self._store(vkey, None, None, value, ttl, 0.0, version)

    async def delete(self, key: Key, *, group: str | None = None) -> bool:
        """Remove `key`; True if it existed. Raises `CacheUnavailable` if Redis was unreachable.

        A fill of the same key already running, in this or another process, does not write back
        the value it loaded before the delete (unless it outlived `lock_ttl`).
        """
        body = self.keys.body(key, group)
        vkey = self.keys.value_key(body)
        flight = self._flights.get(vkey)
        if flight is not None:
            flight.store = False
        lkey = self.keys.lock_key(body)
        self._forget_locally(vkey)
        try:
            removed = await self._must(self._delete, keys=[vkey, lkey], what="delete")
        finally:
            self._forget_locally(vkey)
        return bool(removed)

    async def invalidate_group(self, group: str) -> None:
        """Invalidate every entry of `group` at once (O(1): a new version token).

        Raises `CacheUnavailable` if Redis was unreachable. Fills that read the old version
        before this call write entries that already read as stale.
        """
        gkey = self.keys.version_key(group)
        self._forget_locally(None)
        try:
            await self._must(self.client.set, gkey, secrets.token_hex(8), what="invalidate group")
        finally:
            self._forget_locally(None)

    # --- lookups --------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One bounded Redis call through the breaker; failures become `CacheUnavailable`."""
        breaker = self._admission
        permit = None
        if breaker is not None:
            permit = breaker.admit()
            if permit is None:
                self._count("bypassed")
                raise CacheUnavailable("Redis skipped: circuit breaker open")
        try:
            with self._bounded():
                result = await fn(*args, **kwargs)
        except BaseException as exc:
            if not self._unreachable(permit, exc):
                raise
            raise CacheUnavailable(f"Redis unreachable: {type(exc).__name__}") from exc
        if breaker is not None:
            breaker.settle(permit)
        return result

    def _unreachable(self, permit: Any, exc: BaseException) -> bool:
        """Settle a call that raised `exc`: True (counted) when it is Redis failing, False when
        `exc` must propagate as it is.

        Cancellation and bugs are settled too, or a half-open breaker would keep waiting for this
        probe's outcome. A WRONGTYPE reply is Redis answering: a success.
        """
        wrongtype = _is_wrongtype(exc)
        if self._admission is not None:
            self._admission.settle(permit, None if wrongtype else exc)
        if wrongtype or (not isinstance(exc, _REDIS_ERRORS) and not is_closed_transport_error(exc)):
            return False
        self._count("errors")
        log.debug("cache: Redis call failed: %r", exc)
        return True

    async def _must(
        self, fn: Callable[..., Awaitable[T]], *args: Any, what: str, **kwargs: Any
    ) -> T:
        try:
            return await self._call(fn, *args, **kwargs)
        except CacheUnavailable as exc:
            raise CacheUnavailable(f"cache {what} failed: {exc}") from exc

    async def _fetch(self, vkey: str, gkey: str | None, keep: bool = False) -> _Fetched:
        """(raw entry, current group version), or None when Redis was unreachable or skipped:
        one bounded Redis call through the breaker, shared by concurrent readers.

        A burst of reads of one key costs one round trip and one connection, not one each:
        without this a hot key's expiry can exhaust the pool and turn the burst into errors.
        With `keep`, the reading caller offers a valid entry to the local tier. The call is
        `_call` written out: this is the hit path, and every coroutine layer shows on it.
        """
        readers = self._reads.get(vkey)
        if readers is not None:
            waiter: asyncio.Future[_Fetched] = asyncio.get_running_loop().create_future()
            readers.append(waiter)
            try:
                return await waiter
            except _Retry:  # the reading caller was cancelled; read ourselves
                return await self._fetch(vkey, gkey, keep)
        self._reads[vkey] = readers = []
        tier = self._tier if keep else None
        # Taken before the request is sent: an invalidation arriving from now on withdraws it.
        marker = tier.begin(vkey) if tier is not None else None
        breaker = self._admission
        result: _Fetched = None
        try:
            permit = None if breaker is None else breaker.admit()
            if breaker is not None and permit is None:
                self._count("bypassed")
            else:
                try:
                    execute: Callable[..., Awaitable[Any]] = self.client.execute_command
                    with self._bounded():
                        if gkey is None:
                            result = await execute("GET", vkey, **_RAW), b""
                        else:
                            current, raw = await execute("MGET", gkey, vkey, **_RAW)
                            result = raw, normalise_version(current)
                except BaseException as exc:
                    if not self._unreachable(permit, exc):
                        if not _is_wrongtype(exc):
                            raise
                        # A foreign value under our key: a miss, which a fill overwrites.
                        result = b"", (b"" if gkey is None else None)
                else:
                    if breaker is not None:
                        breaker.settle(permit)
        except BaseException:
            del self._reads[vkey]
            if tier is not None:
                tier.abandon(vkey, marker)
            for waiter in readers:
                if not waiter.done():
                    waiter.set_exception(_Retry())
            raise
        del self._reads[vkey]
        if tier is not None:
            if result is None:
                tier.abandon(vkey, marker)
            else:
                self._offer(tier, vkey, marker, result)
        for waiter in readers:
            if not waiter.done():
                waiter.set_result(result)
        return result

    def _offer(
        self,
        tier: LocalTier,
        vkey: str,
        marker: Any,
        result: tuple[bytes | None, bytes | None],
    ) -> None:
        """Keep a valid, current entry just read in the local tier."""
        raw, current = result
        entry = unpack(raw, self._codec_id) if raw else None
        if entry is None or entry[2] != current:
            tier.abandon(vkey, marker)
            return
        expiry, _, _, payload = entry
        tier.put(vkey, marker, payload, expiry - time.time())

    def _local_hit(self, tier: LocalTier, vkey: str, type_: Any) -> Any:
        """The decoded value held in the local tier, or `_NOT_HELD`."""
        payload = tier.get(vkey)
        if payload is None:
            return _NOT_HELD
        try:
            value = self._decode(payload, type_)
        except Exception:  # held for a caller of another type_: ask Redis
            return _NOT_HELD
        self.stats.hits += 1
        self.stats.local_hits += 1
        if self._metrics is not None:
            self._emit("hits", 1.0)
            self._emit("local_hits", 1.0)
        return value

    async def _lookup(
        self,
        vkey: str,
        gkey: str | None,
        type_: Any,
        *,
        count: bool = True,
        early: bool = True,
        keep: bool = False,
    ) -> _Lookup:
        """(state, value, current group version); the version is b"" for ungrouped keys."""
        return self._judge(await self._fetch(vkey, gkey, keep), type_, count, early)

    def _judge(
        self, fetched: _Fetched, type_: Any, count: bool = True, early: bool = True
    ) -> _Lookup:
        """What a fetch found: (state, value, current group version)."""
        if fetched is None:
            return _DOWN, None, None
        raw, current = fetched
        if raw is None:
            if count:
                self._count("misses")
            return _MISS, None, current
        entry = unpack(raw, self._codec_id)
        if entry is None:
            return self._undecodable(count, current)
        expiry, delta, version, payload = entry
        if version != current:
            if count:
                self._count("stale")
                self._count("misses")
            return _MISS, None, current
        try:
            value = self._decode(payload, type_)
        except Exception:
            return self._undecodable(count, current)
        if (
            early
            and delta > 0.0
            and self._beta > 0.0
            # XFetch: refresh early with a probability that rises as expiry nears and as the
            # value gets more expensive to recompute.
            and time.time() - delta * self._beta * math.log(1.0 - random.random()) >= expiry
        ):
            return _REFRESH, value, current
        if count:
            self.stats.hits += 1
            if self._metrics is not None:
                self._emit("hits", 1.0)
        return _HIT, value, current

    def _undecodable(self, count: bool, current: bytes | None) -> _Lookup:
        if count:
            self._count("decode_failures")
            self._count("misses")
        return _MISS, None, current

    # --- fills ----------------------------------------------------------------------------------

    def _start(
        self,
        vkey: str,
        make: Callable[[_Flight], Coroutine[Any, Any, Any]],
        *,
        early: bool = False,
    ) -> _Flight:
        flight = _Flight(early)
        # A task of its own: the load outlives any one waiter's cancellation.
        flight.task = asyncio.get_running_loop().create_task(make(flight))
        self._flights[vkey] = flight
        flight.task.add_done_callback(partial(self._landed, vkey, flight))
        return flight

    def _landed(self, vkey: str, flight: _Flight, task: asyncio.Task[Any]) -> None:
        if self._flights.get(vkey) is flight:
            del self._flights[vkey]
        if not task.cancelled():
            # Mark the exception retrieved: every waiter may have been cancelled.
            task.exception()

    async def _refresh_early(
        self,
        body: str,
        vkey: str,
        gkey: str | None,
        loader: Callable[[], Awaitable[T]],
        ttl: float,
        current: T,
        version: bytes | None,
    ) -> T:
        """Refresh a still valid entry if nobody else is; everyone else keeps the current value."""
        if vkey in self._flights:
            return current
        flight = self._start(
            vkey,
            lambda f: self._early_fill(f, body, vkey, gkey, loader, ttl, current, version),
            early=True,
        )
        return await asyncio.shield(flight.task)

    async def _early_fill(
        self,
        flight: _Flight,
        body: str,
        vkey: str,
        gkey: str | None,
        loader: Callable[[], Awaitable[T]],
        ttl: float,
        current: T,
        version: bytes | None,
    ) -> T:
        # The lock is taken inside the flight's own task: a caller cancelled while SET NX is on
        # the wire cannot leave a lock behind that nobody holds (it would block every
        # process's refresh of this key until the lock's TTL ran out).
        lkey = self.keys.lock_key(body)
        token = await self._acquire(lkey)
        if token is None or token == _HELD:
            return current
        self._count("early_refreshes")
        return await self._fill(flight, vkey, body, gkey, loader, ttl, None, version, True, token)

    async def _fill(
        self,
        flight: _Flight,
        vkey: str,
        body: str,
        gkey: str | None,
        loader: Callable[[], Awaitable[T]],
        ttl: float,
        type_: Any,
        version: bytes | None,
        redis_up: bool,
        token: str | None = None,
    ) -> T:
        lkey = self.keys.lock_key(body)
        try:
            if redis_up and token is None:
                token = await self._acquire(lkey)
                if token is None:
                    redis_up = False
                elif token == _HELD:
                    token = None
                    self._count("lock_waits")
                    outcome, found, version = await self._wait_for_filler(
                        vkey, lkey, gkey, type_, version
                    )
                    if outcome == "value":
                        return found  # type: ignore[no-any-return]
                    if outcome == "token":
                        token = found
                    elif outcome == "down":
                        redis_up = False
                    # "timeout": the holder is stuck; load without the lock and still store.
                if token is not None and not flight.early:
                    # Another process may have filled the entry and released the lock between
                    # our last miss and this acquisition: look again before loading.
                    state, found, seen = await self._lookup(
                        vkey, gkey, type_, count=False, early=False
                    )
                    if state == _HIT:
                        return found  # type: ignore[no-any-return]
                    if state == _MISS:
                        version = seen
            if redis_up and gkey is not None and version is None:
                version = await self._group_version(gkey)
                redis_up = version is not None
            value, delta = await self._run_loader_timed(loader)
            if (
                redis_up
                and flight.store
                and version is not None
                and await self._store(vkey, lkey, token, value, ttl, delta, version)
            ):
                token = None  # released by the store script
            return value
        finally:
            if token is not None:
                await self._unlock(lkey, token)

    async def _wait_for_filler(
        self, vkey: str, lkey: str, gkey: str | None, type_: Any, version: bytes | None
    ) -> tuple[str, Any, bytes | None]:
        """Poll for another process's fill.

        Returns ("value", value, version), ("token", token, version), ("down", ...) or
        ("timeout", ...).
        """
        give_up_at = time.monotonic() + self.settings.lock_wait
        delay = _POLL_FIRST
        while True:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                self._count("lock_timeouts")
                return "timeout", None, version
            await sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)
            state, value, version = await self._lookup(vkey, gkey, type_, count=False, early=False)
            if state == _HIT:
                return "value", value, version
            if state == _DOWN:
                return "down", None, None
            # Still missing: the holder may have died or failed; take over if the lock is free.
            token = await self._acquire(lkey)
            if token is None:
                return "down", None, None
            if token != _HELD:
                return "token", token, version

    async def _acquire(self, lkey: str) -> str | None:
        """A fresh token if we got the lock, `_HELD` if someone has it, None if Redis is down."""
        token = secrets.token_hex(16)
        try:
            ok = await self._call(self.client.set, lkey, token, nx=True, px=self._lock_px)
        except (CacheUnavailable, ResponseError):
            return None
        return token if ok else _HELD

    async def _unlock(self, lkey: str, token: str) -> None:
        # On failure the lock's TTL frees it.
        with suppress(CacheUnavailable, ResponseError):
            await self._call(self._release, keys=[lkey], args=[token])

    async def _group_version(self, gkey: str) -> bytes | None:
        try:
            token = await self._call(self._ensure_version, keys=[gkey], args=[secrets.token_hex(8)])
        except (CacheUnavailable, ResponseError):
            return None
        return normalise_version(token)

    async def _run_loader(self, loader: Callable[[], Awaitable[T]]) -> T:
        return (await self._run_loader_timed(loader))[0]

    async def _run_loader_timed(self, loader: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        start = time.perf_counter()
        value = await loader()
        delta = time.perf_counter() - start
        self.stats.loader_calls += 1
        if self._metrics is not None:
            self._emit("loader_calls", delta)
        return value, delta

    async def _store(
        self,
        vkey: str,
        lkey: str | None,
        token: str | None,
        value: Any,
        ttl: float,
        delta: float,
        version: bytes,
    ) -> bool:
        """Write an entry (through the lock script when holding `token`); False if unreachable."""
        data = pack(self._codec_id, time.time() + ttl, delta, version, self.codec.encode(value))
        px = max(1, int(ttl * 1000))
        self._forget_locally(vkey)
        try:
            if token is None or lkey is None:
                await self._call(self.client.set, vkey, data, px=px)
            else:
                await self._call(self._store_release, keys=[vkey, lkey], args=[data, px, token])
        except (CacheUnavailable, ResponseError):
            return False
        finally:
            self._forget_locally(vkey)
        return True

    # --- helpers --------------------------------------------------------------------------------

    def _ttl(self, ttl: float | None) -> float:
        return self._default_ttl if ttl is None else _checked_ttl(ttl)

    def _count(self, event: CacheEvent) -> None:
        setattr(self.stats, event, getattr(self.stats, event) + 1)
        if self._metrics is not None:
            self._emit(event, 1.0)

    def _emit(self, event: CacheEvent, value: float) -> None:
        try:
            self._metrics(event, value)  # type: ignore[misc]
        except Exception:
            log.exception("cache metrics hook failed for %s", event)
