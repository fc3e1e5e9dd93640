"""Fills racing deletes, early refreshes racing other processes, cancelled shared reads, and Redis
dropping out while a fill waits for another process: each on real Redis, ordered by events."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from core.cache import Cache
from core.cache.cache import _POLL_MAX
from core.cache.envelope import pack
from core.config import CacheSettings
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.anyio


def make(client: aioredis.Redis, prefix: str, **overrides: Any) -> Cache:
    return Cache(client, prefix=prefix, settings=CacheSettings.model_validate(overrides))


async def _until(check: Callable[[], Any]) -> None:
    """Poll `check` (the cache's internal state) until it holds; fail after 5 seconds."""
    with anyio.fail_after(5):
        while not check():  # noqa: ASYNC110 - the cache's state has no event to wait on
            await anyio.sleep(0.005)


async def _until_async(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` (Redis's state) until it holds; fail after 5 seconds."""
    with anyio.fail_after(5):
        while not await check():  # noqa: ASYNC110 - Redis's state has no event to wait on
            await anyio.sleep(0.005)


# --- a delete during a fill that holds no lock -------------------------------------------------


@pytest.mark.parametrize("lockless", ["lock-wait-timed-out", "lock-expired"])
async def test_a_delete_during_a_fill_without_a_lock_stops_its_write_back(
    lockless: str, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    # Only this process knows of the fill: the lock that would tell the store script about the
    # delete is someone else's (we timed out waiting for it) or gone (it expired mid-load).
    if lockless == "lock-wait-timed-out":
        cache = make(redis_client, key_prefix, lock_wait=0.05)
        lock_key = cache.keys.lock_key(cache.keys.body("k"))
        await redis_client.set(lock_key, "stuck-token", px=60_000)
    else:
        cache = make(redis_client, key_prefix, lock_ttl=0.05)
        lock_key = cache.keys.lock_key(cache.keys.body("k"))
    started, release = anyio.Event(), anyio.Event()

    async def read_before_the_write() -> str:
        started.set()
        await release.wait()
        return "old row"

    result: list[str] = []

    async def fill() -> None:
        result.append(await cache.get_or_set("k", read_before_the_write, 60))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fill)
            await started.wait()
            assert await cache.delete("k") is False  # the row changed: drop the entry
            if lockless == "lock-expired":
                await _until_async(lambda: _gone(redis_client, lock_key))
            release.set()
    assert result == ["old row"]  # the caller still gets what it loaded
    assert await redis_client.get(cache.redis_key("k")) is None
    if lockless == "lock-wait-timed-out":
        assert cache.stats.lock_timeouts == 1  # the fill really went ahead without the lock
        assert await redis_client.get(lock_key) == b"!stuck-token"  # marked by the delete
    else:
        assert await cache.get_or_set("k", _const("new row"), 60) == "new row"


async def _gone(client: aioredis.Redis, key: str) -> bool:
    return await client.exists(key) == 0


def _const(value: str) -> Callable[[], Any]:
    async def load() -> str:
        return value

    return load


# --- early refresh while another process holds the lock --------------------------------------


async def _due_for_early_refresh(
    client: aioredis.Redis, cache: Cache, key: str, value: Any
) -> None:
    """Store `value` as `cache` would, at its logical expiry: XFetch then refreshes on every read
    (with certainty, not by chance), while Redis keeps the entry for another minute."""
    raw = pack(cache.codec.codec_id, time.time(), 0.05, b"", cache.codec.encode(value))
    await client.set(cache.redis_key(key), raw, px=60_000)


async def test_an_early_refresh_is_skipped_while_another_process_refreshes(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    first, second = make(redis_client, key_prefix), make(redis_client, key_prefix)
    lock_key = first.keys.lock_key(first.keys.body("k"))
    await _due_for_early_refresh(redis_client, first, "k", "current")
    started, release = anyio.Event(), anyio.Event()
    second_loads = 0

    async def refresh_in_first() -> str:
        started.set()
        await release.wait()
        return "from first"

    async def refresh_in_second() -> str:
        nonlocal second_loads
        second_loads += 1
        return "from second"

    refreshed: list[str] = []

    async def first_refreshes() -> None:
        refreshed.append(await first.get_or_set("k", refresh_in_first, 60))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_refreshes)
            await started.wait()  # the first process holds the lock and is loading
            assert await redis_client.exists(lock_key) == 1
            # The second sees the same entry due for refresh, finds the lock taken and keeps
            # serving the still valid value instead of loading a second time.
            assert await second.get_or_set("k", refresh_in_second, 60) == "current"
            assert await second.get_or_set("k", refresh_in_second, 60) == "current"
            release.set()
    assert refreshed == ["from first"]
    assert second_loads == 0
    assert (first.stats.early_refreshes, second.stats.early_refreshes) == (1, 0)
    assert second.stats.loader_calls == 0
    assert await second.get("k") == "from first"
    assert await redis_client.exists(lock_key) == 0


async def test_a_caller_cancelled_while_taking_the_refresh_lock_leaves_no_lock_behind(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))
    await _due_for_early_refresh(redis_client, cache, "k", "current")
    real_acquire = cache._acquire
    taken, answer = anyio.Event(), anyio.Event()

    async def acquire_answered_late(lkey: str) -> str | None:
        # The lock is set on the server; its reply is still on the way back.
        token = await real_acquire(lkey)
        taken.set()
        await answer.wait()
        return token

    cache._acquire = acquire_answered_late  # type: ignore[method-assign]
    with anyio.fail_after(10):
        caller = asyncio.ensure_future(cache.get_or_set("k", _const("refreshed"), 60))
        await taken.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        answer.set()
        await _until_async(lambda: _flights_done(cache))
    # The refresh went on in its own task and released its lock: nothing blocks the next one.
    assert await redis_client.exists(lock_key) == 0
    assert await cache.get("k") == "refreshed"


async def _flights_done(cache: Cache) -> bool:
    return not cache._flights


# --- readers sharing one read -----------------------------------------------------------------


class _SharedRead:
    """A cache behind a fault proxy whose leading reader's reply is held back, with three
    followers (two `get_or_set`, one `get`) waiting on that one read."""

    def __init__(self, proxy: FaultProxy, cache: Cache) -> None:
        self.proxy = proxy
        self.cache = cache
        self.loads = 0
        self.leader: asyncio.Task[Any]
        self.followers: list[asyncio.Task[Any]] = []

    async def load(self) -> str:
        self.loads += 1
        return "loaded"


@contextlib.asynccontextmanager
async def _shared_read(
    redis_url: str, key_prefix: str, group: str | None, timeout: float
) -> AsyncIterator[_SharedRead]:
    async with FaultProxy.for_url(redis_url) as proxy:
        client = aioredis.Redis.from_url(proxy.url_for(redis_url))
        try:
            shared = _SharedRead(proxy, make(client, key_prefix, operation_timeout=timeout))
            cache = shared.cache
            # The write also opens the pool's one connection.
            assert await cache.set("k", "cached", 60, group=group)
            vkey = cache.redis_key("k", group=group)
            loop = asyncio.get_running_loop()
            proxy.delay(60, "downstream")  # the leading read's reply is held back
            shared.leader = loop.create_task(cache.get_or_set("k", shared.load, 60, group=group))
            await _until(lambda: vkey in cache._reads)  # its GET (MGET with a group) is in flight
            shared.followers = [
                loop.create_task(cache.get_or_set("k", shared.load, 60, group=group)),
                loop.create_task(cache.get_or_set("k", shared.load, 60, group=group)),
                loop.create_task(cache.get("k", "absent", group=group)),
            ]
            await _until(lambda: len(cache._reads.get(vkey, ())) == len(shared.followers))
            yield shared
        finally:
            proxy.restore()
            await client.aclose()


@pytest.fixture(params=[None, "g"], ids=["plain", "grouped"])
def shared_read(
    request: pytest.FixtureRequest,
    redis_client: aioredis.Redis,  # deletes the keys afterwards
    redis_url: str,
    key_prefix: str,
) -> Callable[[float], contextlib.AbstractAsyncContextManager[_SharedRead]]:
    """`_shared_read` with a timeout still to choose, on a plain and on a grouped key."""
    return functools.partial(_shared_read, redis_url, key_prefix, request.param)


async def test_readers_sharing_a_cancelled_read_read_again_instead_of_failing_open(
    shared_read: Callable[[float], contextlib.AbstractAsyncContextManager[_SharedRead]],
) -> None:
    # A generous timeout: the held-back reply must end by cancellation, not by timing out.
    async with shared_read(30) as shared:
        shared.proxy.restore()  # Redis answers promptly again, on new connections
        shared.leader.cancel()
        with anyio.fail_after(10):
            results = await asyncio.gather(*shared.followers)
            with pytest.raises(asyncio.CancelledError):
                await shared.leader
    # Redis was up all along: the followers read the entry themselves, as if the leader never was.
    assert results == ["cached", "cached", "cached"]
    assert shared.loads == 0
    assert shared.cache.stats.errors == 0
    assert shared.cache.stats.hits == len(shared.followers)
    assert shared.cache.stats.misses == 0


async def test_readers_sharing_a_read_that_times_out_fail_open_on_that_one_call(
    shared_read: Callable[[float], contextlib.AbstractAsyncContextManager[_SharedRead]],
) -> None:
    async with shared_read(0.3) as shared:
        with anyio.fail_after(10):
            results = await asyncio.gather(shared.leader, *shared.followers)
    # One bounded call failed (the client's own retries inside it), and every reader sharing
    # it failed open on its outcome: none of them asked Redis again, which would count more.
    assert results == ["loaded", "loaded", "loaded", "absent"]
    assert shared.cache.stats.errors == 1
    assert shared.loads == 1  # the three get_or_set callers shared one fill


# --- Redis dropping out while a fill waits for another process ---------------------------------

TIMEOUT = 0.3
LOCK_WAIT = 10.0
# Once Redis drops out, the waiter notices at its next poll (at most _POLL_MAX later) through one
# call bounded by operation_timeout, then loads; the rest is slack for a heavily loaded machine.
# Waiting out lock_wait instead would take far longer.
BOUND = TIMEOUT + _POLL_MAX + 3.0
assert BOUND < LOCK_WAIT


@pytest.mark.parametrize("group", [None, "g"], ids=["plain", "grouped"])
@pytest.mark.parametrize("outage", ["cut", "blackhole"])
@pytest.mark.parametrize("failing_call", ["look-for-their-value", "try-for-the-lock"])
async def test_redis_dropping_out_while_waiting_for_another_filler_fails_open_promptly(
    outage: str,
    failing_call: str,
    group: str | None,
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FaultProxy.for_url(redis_url) as proxy:
        # Default redis-py client settings (its own retries included): the cache's bound must
        # hold whatever the client does.
        client = aioredis.Redis.from_url(proxy.url_for(redis_url))
        try:
            cache = make(client, key_prefix, operation_timeout=TIMEOUT, lock_wait=LOCK_WAIT)
            lock_key = cache.keys.lock_key(cache.keys.body("k", group))
            # Another process is filling the key (set behind the proxy's back, on the server).
            await redis_client.set(lock_key, "their-token", px=60_000)
            acquire = cache._acquire
            tries = 0
            dropped = 0.0

            def drop() -> None:
                nonlocal dropped
                dropped = time.monotonic()
                if outage == "cut":
                    proxy.cut()
                else:
                    proxy.blackhole()

            async def acquire_with_an_outage(lkey: str) -> str | None:
                # Try 1: the fill finds the lock held and starts waiting; try 2: the waiter's
                # first try to take the lock over after finding no value yet.
                nonlocal tries
                tries += 1
                if failing_call == "try-for-the-lock" and tries == 2:
                    drop()
                token = await acquire(lkey)
                if failing_call == "look-for-their-value" and tries == 1:
                    drop()
                return token

            monkeypatch.setattr(cache, "_acquire", acquire_with_an_outage)
            loads = 0

            async def load() -> str:
                nonlocal loads
                loads += 1
                return "loaded"

            with anyio.fail_after(LOCK_WAIT + 10):
                assert await cache.get_or_set("k", load, 60, group=group) == "loaded"
            elapsed = time.monotonic() - dropped
        finally:
            await client.aclose()
    assert dropped > 0.0
    assert tries == (1 if failing_call == "look-for-their-value" else 2)
    assert elapsed < BOUND
    assert loads == 1
    assert cache.stats.lock_waits == 1
    assert cache.stats.lock_timeouts == 0  # gave up on Redis, not on the other filler
    assert cache.stats.errors == 1  # and made no further Redis call after the failing one
    # Returned, not cached.
    assert await redis_client.get(cache.redis_key("k", group=group)) is None
    assert await redis_client.get(lock_key) == b"their-token"
