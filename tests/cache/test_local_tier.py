"""The local tier: served only while coherent, bounded under hostile keys, dropped and bypassed
when its invalidation connection is lost, back once it is re-established; on real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from core.cache import Cache
from core.cache.local_tier import ENTRY_OVERHEAD, LocalTier
from core.config import CacheSettings
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.anyio


def make(client: aioredis.Redis, prefix: str, **overrides: Any) -> Cache:
    return Cache(client, prefix=prefix, settings=CacheSettings.model_validate(overrides))


async def _until(check: Callable[[], Any], timeout: float = 10) -> None:
    """Poll `check` until it holds (the tier's state has no event to wait on)."""
    with anyio.fail_after(timeout):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def _warm(cache: Cache, key: str, value: Any) -> None:
    """Store `value` and read it until the local tier serves it."""
    await cache.set(key, value)
    await cache.get(key)
    listener = cache.invalidations
    assert listener is not None and await listener.wait_live(10)
    hits = cache.stats.local_hits
    await _until_async(lambda: _served_locally(cache, key, hits))


async def _served_locally(cache: Cache, key: str, hits_before: int) -> bool:
    await cache.get(key)
    return cache.stats.local_hits > hits_before


async def _until_async(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - Redis's state has no event to wait on
            await anyio.sleep(0.005)


async def _idle_for_a_second(client: aioredis.Redis, key: str) -> bool:
    return int(await client.object("idletime", key)) >= 1


def _loader(value: Any) -> Callable[[], Awaitable[Any]]:
    async def load() -> Any:
        return value

    return load


# --- the tier on its own --------------------------------------------------------------------


def _tier(**overrides: Any) -> LocalTier:
    tier = LocalTier(**{"max_entries": 100, "max_bytes": 1 << 20, "ttl": 60.0, **overrides})
    tier.live = True
    return tier


def test_a_value_read_while_its_key_was_invalidated_is_not_kept() -> None:
    tier = _tier()
    marker = tier.begin("k")
    tier.invalidate(["k"])  # the invalidation overtook the reply
    assert not tier.put("k", marker, b"old", 60)
    assert tier.get("k") is None
    marker = tier.begin("k")
    tier.flush()
    assert not tier.put("k", marker, b"old", 60)
    marker = tier.begin("k")
    assert tier.put("k", marker, b"new", 60)
    assert tier.get("k") == b"new"
    assert tier.pending_reads == 0


def test_nothing_is_served_or_kept_while_not_live() -> None:
    tier = _tier()
    marker = tier.begin("k")
    assert tier.put("k", marker, b"v", 60)
    tier.live = False
    assert tier.get("k") is None
    assert tier.begin("k") is None
    assert not tier.put("k", None, b"v", 60)


def test_an_entry_is_not_served_past_its_redis_expiry_or_the_tier_ttl() -> None:
    tier = _tier(ttl=0.05)
    assert tier.put("short", tier.begin("short"), b"v", 0.01)
    assert tier.put("long", tier.begin("long"), b"v", 3600)
    time.sleep(0.06)
    assert tier.get("short") is None
    assert tier.get("long") is None
    assert len(tier) == 0 and tier.nbytes == 0


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.text(max_size=300), st.integers(0, 5000)),
        st.tuples(st.just("invalidate"), st.text(max_size=300), st.just(0)),
        st.tuples(st.just("get"), st.text(max_size=300), st.just(0)),
    ),
    max_size=200,
)


@given(ops=_OPS, max_entries=st.integers(1, 20), max_bytes=st.integers(200, 20_000))
@settings(max_examples=200, deadline=None)
def test_memory_stays_under_both_caps_whatever_the_keys_and_sizes(
    ops: list[tuple[str, str, int]], max_entries: int, max_bytes: int
) -> None:
    tier = _tier(max_entries=max_entries, max_bytes=max_bytes)
    for op, key, size in ops:
        if op == "put":
            kept = tier.put(key, tier.begin(key), b"x" * size, 60)
            fits = size + len(key) + ENTRY_OVERHEAD <= max_bytes
            assert kept == fits
            if kept:
                assert tier.get(key) == b"x" * size  # the newest entry is never the one evicted
        elif op == "invalidate":
            tier.invalidate([key])
            assert tier.get(key) is None
        else:
            tier.get(key)
        assert len(tier) <= max_entries
        assert tier.nbytes <= max_bytes
        assert tier.pending_reads == 0


# --- through the cache, on real Redis ---------------------------------------------------------


async def test_hits_are_served_from_memory_once_the_subscription_is_live(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with make(redis_client, key_prefix, local_tier=True) as cache:
        await _warm(cache, "k", {"n": [1, 2.5]})
        stored = cache.redis_key("k")
        # Any read of the key resets its idle time to 0 (OBJECT itself does not). Counted per
        # key, so other clients of the same server cannot disturb the count.
        await _until_async(lambda: _idle_for_a_second(redis_client, stored))
        hits = cache.stats.local_hits
        for _ in range(50):
            assert await cache.get_or_set("k", _loader("loaded")) == {"n": [1, 2.5]}
        # Not one GET reached Redis for those 50 hits.
        assert await _idle_for_a_second(redis_client, stored)
        assert cache.stats.local_hits == hits + 50
        first = await cache.get_or_set("k", _loader("loaded"))
        first["n"].append("mutated")
        assert await cache.get("k") == {"n": [1, 2.5]}  # each hit is decoded afresh


async def test_the_tier_is_opt_in_per_cache_and_per_call(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with make(redis_client, key_prefix) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert cache.local_tier is None  # never used, never started
        assert await cache.get("k", local=True) == 1
        assert cache.invalidations is not None and await cache.invalidations.wait_live(10)
        await _until_async(lambda: _served_locally_call(cache))
        hits = cache.stats.local_hits
        assert await cache.get("k") == 1  # this call did not ask for it
        assert cache.stats.local_hits == hits
    async with make(redis_client, key_prefix, local_tier=True) as cache:
        await _warm(cache, "k", 2)
        hits = cache.stats.local_hits
        assert await cache.get("k", local=False) == 2
        assert cache.stats.local_hits == hits


async def _served_locally_call(cache: Cache) -> bool:
    hits = cache.stats.local_hits
    await cache.get("k", local=True)
    return cache.stats.local_hits > hits


@pytest.mark.parametrize("write", ["set", "delete", "invalidate_group", "early refresh"])
async def test_a_write_through_another_client_evicts_the_entry_here(
    write: str, redis_url: str, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    other_client = aioredis.Redis.from_url(redis_url)
    group = "g" if write == "invalidate_group" else None
    try:
        async with (
            make(redis_client, key_prefix, local_tier=True) as here,
            make(other_client, key_prefix, early_refresh=10.0) as there,
        ):
            if write == "early refresh":
                # Stored with a slow loader's duration: the other process's XFetch then
                # refreshes it early, a fill over an entry still held here.
                async def slow() -> str:
                    await asyncio.sleep(0.3)
                    return "old"

                await there.get_or_set("k", slow, ttl=2.0)
            else:
                await there.set("k", "old", group=group)
            await here.get("k", group=group)
            assert here.invalidations is not None and await here.invalidations.wait_live(10)
            hits = here.stats.local_hits
            await _until_async(lambda: _local_read(here, group, hits, "old"))
            if write == "set":
                await there.set("k", "new")
            elif write == "delete":
                assert await there.delete("k")
            elif write == "invalidate_group":
                await there.invalidate_group("g")
            else:
                while there.stats.early_refreshes == 0:
                    await there.get_or_set("k", _loader("new"), ttl=2.0)
            expected = None if write in ("delete", "invalidate_group") else "new"
            await _until(lambda: here.local_tier is not None and len(here.local_tier) == 0, 5)
            assert await here.get("k", group=group) == expected
    finally:
        await other_client.aclose()


async def _local_read(cache: Cache, group: str | None, hits: int, value: str) -> bool:
    assert await cache.get("k", group=group) == value
    return cache.stats.local_hits > hits


async def test_own_writes_are_read_back_at_once(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with make(redis_client, key_prefix, local_tier=True) as cache:
        await _warm(cache, "k", "old")
        await cache.set("k", "new")
        assert await cache.get("k") == "new"
        await _warm(cache, "k", "new")
        await cache.delete("k")
        assert await cache.get("k") is None
        assert await cache.get_or_set("k", _loader("filled")) == "filled"
        assert await cache.get("k") == "filled"


async def test_an_own_write_forgets_only_its_key_and_a_group_invalidation_everything(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with make(redis_client, key_prefix, local_tier=True) as cache:
        await _warm(cache, "a", 1)
        await _warm(cache, "b", 2)
        await cache.set("a", 10)
        hits = cache.stats.local_hits
        assert await cache.get("b") == 2
        assert cache.stats.local_hits == hits + 1  # still from memory
        assert await cache.get("a") == 10
        await cache.set("g", 1, group="grp")
        await cache.get("g", group="grp")
        hits = cache.stats.local_hits
        await _until_async(lambda: _grouped_served_locally(cache, hits))
        await cache.invalidate_group("grp")
        assert await cache.get("g", group="grp") is None  # at once, not when Redis says so


async def _grouped_served_locally(cache: Cache, hits_before: int) -> bool:
    await cache.get("g", group="grp")
    return cache.stats.local_hits > hits_before


class Point(BaseModel):
    x: int
    y: float


async def test_a_tier_hit_is_decoded_into_the_callers_type_and_counted_once(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    events: list[tuple[str, float]] = []
    cfg = CacheSettings.model_validate({"local_tier": True})

    def hook(event: str, value: float) -> None:
        events.append((event, value))

    async with Cache(redis_client, prefix=key_prefix, settings=cfg, metrics=hook) as cache:
        await _warm(cache, "p", Point(x=1, y=2.5))
        hits, local_hits = cache.stats.hits, cache.stats.local_hits
        events.clear()
        found = await cache.get_or_set("p", _loader(None), type_=Point)
        assert isinstance(found, Point) and found == Point(x=1, y=2.5)
        assert (cache.stats.hits, cache.stats.local_hits) == (hits + 1, local_hits + 1)
        assert events == [("hits", 1.0), ("local_hits", 1.0)]


async def test_a_lost_invalidation_connection_empties_the_tier_and_reads_go_to_redis_until_back(
    redis_url: str, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    async with make(redis_client, key_prefix, local_tier=True) as cache:
        await _warm(cache, "k", "old")
        listener, tier = cache.invalidations, cache.local_tier
        assert listener is not None and tier is not None and listener.client_id is not None
        await redis_client.execute_command("CLIENT", "KILL", "ID", listener.client_id)
        await _until(lambda: not listener.live, 5)
        assert len(tier) == 0
        # While it is down, a write elsewhere is seen at once: the reads go to Redis.
        writer = aioredis.Redis.from_url(redis_url)
        try:
            await make(writer, key_prefix).set("k", "new")
        finally:
            await writer.aclose()
        if not listener.live:
            hits = cache.stats.local_hits
            assert await cache.get("k") == "new"
            assert cache.stats.local_hits == hits
        assert await listener.wait_live(10)
        assert listener.connections == 2
        await _until_async(lambda: _local_read(cache, None, cache.stats.local_hits, "new"))


async def test_a_silent_connection_is_given_up_within_twice_the_heartbeat(
    redis_client: aioredis.Redis, redis_proxy: FaultProxy, key_prefix: str, redis_url: str
) -> None:
    heartbeat = 0.2
    proxied = aioredis.Redis.from_url(redis_proxy.url_for(redis_url))
    try:
        async with make(proxied, key_prefix, local_tier=True, local_heartbeat=heartbeat) as cache:
            await _warm(cache, "k", "old")
            listener = cache.invalidations
            assert listener is not None
            redis_proxy.blackhole()  # nothing passes, nothing is closed
            lost = time.monotonic()
            await make(redis_client, key_prefix).set("k", "new")  # its invalidation is lost
            await _until(lambda: not listener.live, 5)
            given_up = time.monotonic() - lost
            # Two heartbeats, plus one read timer's slack on a busy machine.
            assert given_up < 2 * heartbeat + 0.5
            assert cache.local_tier is not None and len(cache.local_tier) == 0
            redis_proxy.restore()
            assert await listener.wait_live(10)
            assert await cache.get("k") == "new"
    finally:
        await proxied.aclose()


async def test_a_restarted_server_is_followed_and_nothing_from_before_is_served(
    tmp_path: Path, key_prefix: str
) -> None:
    from core.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "redis") as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            async with make(client, key_prefix, local_tier=True) as cache:
                await _warm(cache, "k", "before")
                listener = cache.invalidations
                assert listener is not None
                await asyncio.to_thread(server.restart)
                # The loss was seen (whether or not the new subscription is already up).
                await _until(lambda: listener.connections >= 2 or not listener.live, 10)
                # The restarted server has no such entry (no persistence here): the loader runs,
                # where a tier that missed the restart would still serve "before".
                assert await cache.get_or_set("k", _loader("after")) == "after"
                assert await listener.wait_live(10)
                assert listener.connections == 2
                # The first calls after the restart may find the client's pooled connections
                # dead and fail open (nothing stored): read through until one is kept and served.
                hits = cache.stats.local_hits
                await _until_async(lambda: _filled_and_served_locally(cache, hits))
        finally:
            await client.aclose()


async def _filled_and_served_locally(cache: Cache, hits: int) -> bool:
    assert await cache.get_or_set("k", _loader("after")) == "after"
    return cache.stats.local_hits > hits


async def test_hostile_keys_and_sizes_keep_the_tier_under_its_caps(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    caps = {"local_max_entries": 50, "local_max_bytes": 16_384}
    async with make(redis_client, key_prefix, local_tier=True, **caps) as cache:
        await _warm(cache, "first", 0)
        tier = cache.local_tier
        assert tier is not None
        entries = {("k", i, "é" * (i % 40)): "x" * ((i * 7919) % 20_000) for i in range(600)}
        for key, value in entries.items():  # some values larger than the whole tier
            await cache.set(key, value)
        # Each write's own invalidation comes back after a moment: let them all arrive.
        await anyio.sleep(0.2)
        for key, value in entries.items():
            assert await cache.get(key) == value  # from Redis, kept if it fits
            assert await cache.get(key) == value  # from memory if it was kept
            assert len(tier) <= 50
            assert tier.nbytes <= 16_384
        assert tier.pending_reads == 0
        assert cache.stats.local_hits > 100
        # Misses of ever new keys leave nothing behind either (no read marker per key).
        for i in range(300):
            assert await cache.get(("missing", i)) is None
        assert tier.pending_reads == 0


async def test_a_cluster_client_is_refused_with_the_reason() -> None:
    cluster = RedisCluster(host="127.0.0.1", port=6379)
    with pytest.raises(ValueError, match="Cluster is not supported"):
        Cache(cluster, settings=CacheSettings(local_tier=True))  # type: ignore[arg-type]
