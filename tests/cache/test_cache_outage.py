"""Outages on a private Redis: the cache fails open within its timeout and recovers."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from core.cache import Cache, CacheUnavailable
from core.config import CacheSettings
from core.embedded import EmbeddedRedis
from core.resilience import BreakerState, CircuitBreaker

pytestmark = pytest.mark.anyio

# Long enough that a healthy server answers within it on a busy machine.
TIMEOUT = 0.5
# Room for the event loop on a busy machine (two cores shared with other work). Without the
# cache's own bound, a call to a hung server would wait for redis-py's socket timeout (5 s by
# default), and retry.
SLACK = 0.6
# A call that fails open: one bounded lookup, then the (instant) loader.
BOUND = TIMEOUT + SLACK


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as rds:
        yield rds


@pytest.fixture
async def client(server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    # Default redis-py client settings (retries with backoff included): the cache's own bound
    # must hold whatever the client would do.
    c = aioredis.Redis.from_url(server.url)
    try:
        yield c
    finally:
        await c.aclose()


def make(client: aioredis.Redis, timeout: float = TIMEOUT, **kw: Any) -> Cache:
    settings = CacheSettings.model_validate({"operation_timeout": timeout, "lock_wait": 0.5})
    return Cache(client, prefix="outage:", settings=settings, **kw)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        return self.calls


async def _timed(aw: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = await aw
    return result, time.monotonic() - start


async def _until_cached_again(cache: Cache) -> None:
    """Wait (bounded) until a write reaches the restarted or resumed server."""
    with anyio.fail_after(10):
        while True:
            if await cache.set("probe", 1, 60):
                return
            await anyio.sleep(0.05)


async def _until(check: Callable[[], bool]) -> None:
    """Poll `check` until it holds; fail after 5 seconds."""
    with anyio.fail_after(5):
        while True:
            if check():
                return
            await anyio.sleep(0.005)


async def _fails_open(cache: Cache, load: Counter, key: str, bound: float = BOUND) -> None:
    before = cache.stats.errors + cache.stats.bypassed
    value, elapsed = await _timed(cache.get_or_set(key, load, 60))
    assert value == load.calls  # the loader's fresh value, never the old cached one
    assert elapsed < bound
    assert cache.stats.errors + cache.stats.bypassed > before


async def _caches_again(cache: Cache, load: Counter) -> None:
    await _until_cached_again(cache)
    first = await cache.get_or_set("after", load, 60)
    assert await cache.get_or_set("after", load, 60) == first  # stored and hit
    assert load.calls == first


async def test_a_stopped_redis_fails_open_within_the_bound_then_recovers(
    server: EmbeddedRedis, client: aioredis.Redis
) -> None:
    cache = make(client)
    load = Counter()
    assert await cache.get_or_set("k", load, 60) == 1
    assert await cache.get_or_set("k", load, 60) == 1

    server.stop()
    for _ in range(3):
        await _fails_open(cache, load, "k")
    assert load.calls == 4
    assert await cache.get("k", "down") == "down"
    assert await cache.set("k", 1, 60) is False
    for op in (lambda: cache.delete("k"), lambda: cache.invalidate_group("g")):
        start = time.monotonic()
        with pytest.raises(CacheUnavailable):
            await op()
        assert time.monotonic() - start < BOUND
    assert cache.stats.errors >= 6

    server.start()
    await _caches_again(cache, load)


async def test_a_hung_redis_is_bounded_by_the_operation_timeout(
    server: EmbeddedRedis, client: aioredis.Redis
) -> None:
    cache = make(client)
    load = Counter()
    assert await cache.get_or_set("k", load, 60) == 1

    server.pause()  # accepts connections, answers nothing
    try:
        for key in ("k", "other", "k"):
            await _fails_open(cache, load, key)
        start = time.monotonic()
        with pytest.raises(CacheUnavailable):
            await cache.delete("k")
        assert time.monotonic() - start < BOUND
        # Concurrent callers during the outage still share one loader call.
        before = load.calls
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(cache.get_or_set, "burst", load, 60)
        assert load.calls == before + 1
    finally:
        server.resume()
    await _caches_again(cache, load)
    assert await cache.get("k") == 1  # the server kept its data while paused; never overwritten


async def test_an_open_breaker_skips_redis_entirely(
    server: EmbeddedRedis, client: aioredis.Redis
) -> None:
    # A timeout long enough that a skip is told apart from a wait however busy the machine, and
    # a reset timeout that outlasts the five skips below, each bounded by a quarter of it.
    timeout = 1.0
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout=2.0)
    cache = make(client, timeout, breaker=breaker)
    load = Counter()
    assert await cache.get_or_set("k", load, 60) == 1

    server.pause()
    try:
        await _fails_open(cache, load, "k", timeout + SLACK)
        await _fails_open(cache, load, "k", timeout + SLACK)
        assert breaker.state is BreakerState.OPEN
        errors, bypassed = cache.stats.errors, cache.stats.bypassed
        for _ in range(5):
            value, elapsed = await _timed(cache.get_or_set("k", load, 60))
            assert value == load.calls
            assert elapsed < timeout / 4  # skipped, not waited for
        assert breaker.state is BreakerState.OPEN
        assert cache.stats.errors == errors  # no call reached the hung server
        assert cache.stats.bypassed >= bypassed + 5
        with pytest.raises(CacheUnavailable, match="breaker"):
            await cache.delete("k")
    finally:
        server.resume()
    # After the reset timeout a probe goes through, succeeds and closes the breaker.
    await _caches_again(cache, load)
    assert breaker.state.value == "closed"


async def test_a_cancelled_call_settles_its_breaker_permit(
    server: EmbeddedRedis, client: aioredis.Redis
) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=0.05)
    # The probe must still be waiting on the hung server when it is cancelled.
    cache = make(client, timeout=30, breaker=breaker)
    opener = make(client, breaker=breaker)
    server.pause()
    try:
        assert await opener.get("k", "d") == "d"  # times out and opens the breaker
        assert breaker.state is BreakerState.OPEN
        await _until(lambda: breaker.state is BreakerState.HALF_OPEN)
        async with anyio.create_task_group() as tg:
            tg.start_soon(cache.get, "k")  # the single probe, waiting on the paused server
            await _until(lambda: breaker.snapshot().probes_in_flight == 1)
            tg.cancel_scope.cancel()
        assert breaker.snapshot().probes_in_flight == 0
        assert breaker.state is BreakerState.HALF_OPEN
    finally:
        server.resume()
    # The cancelled probe released its slot: a new probe is admitted and closes the breaker.
    await _until_cached_again(cache)
    assert breaker.state is BreakerState.CLOSED


async def test_an_unreachable_cluster_fails_open_and_feeds_the_breaker() -> None:
    # A cluster client reports failed node discovery as RedisClusterException, not a RedisError.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RedisCluster(host="127.0.0.1", port=port)
    breaker = CircuitBreaker("redis", failure_threshold=3, reset_timeout=60)
    cache = make(client, breaker=breaker)  # type: ignore[arg-type]
    plain = make(client)  # type: ignore[arg-type]
    load = Counter()
    try:
        for group in (None, "g"):
            value, elapsed = await _timed(cache.get_or_set("k", load, 60, group=group))
            assert value == load.calls and elapsed < BOUND
        assert cache.stats.errors == 2 and load.calls == 2
        assert await cache.get("k", "down") == "down"
        assert breaker.state.value == "open"
        assert await cache.set("k", 1, 60) is False
        assert cache.stats.bypassed == 1
        with pytest.raises(CacheUnavailable) as caught:
            await plain.invalidate_group("g")
        assert isinstance(caught.value.__cause__, CacheUnavailable)
        assert isinstance(caught.value.__cause__.__cause__, RedisClusterException)
        with pytest.raises(CacheUnavailable):
            await plain.delete("k")
    finally:
        await client.aclose()


def _closed_transport_error() -> AttributeError:
    # What CPython 3.12.1 and 3.13.0 raise from writelines() once the peer has closed.
    return AttributeError(
        "'NoneType' object has no attribute '_add_writer'", name="_add_writer", obj=None
    )


async def test_the_closed_transport_error_of_some_python_builds_fails_open(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=100)
    cache = Cache(redis_client, prefix=key_prefix, breaker=breaker)
    load = Counter()

    async def closed(*args: Any, **kwargs: Any) -> Any:
        raise _closed_transport_error()

    monkeypatch.setattr(redis_client, "execute_command", closed)
    assert await cache.get_or_set("k", load, 60) == 1
    assert cache.stats.errors >= 1
    assert breaker.snapshot().consecutive_failures >= 1

    async def bug(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'Thing' object has no attribute 'x'", name="x", obj=object())

    monkeypatch.setattr(redis_client, "execute_command", bug)
    with pytest.raises(AttributeError, match="'x'"):
        await cache.get_or_set("k", load, 60)  # a programming error is not an outage
