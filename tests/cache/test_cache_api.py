"""Cache API on the shared Redis: get/set/delete, groups, early refresh, decorator, hooks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from core.cache import Cache, CacheStats, cached
from core.config import CacheSettings

pytestmark = pytest.mark.anyio


def make(client: aioredis.Redis, prefix: str, **overrides: Any) -> Cache:
    # These tests are about what is stored, not about slow Redis: the production bound (0.25 s)
    # would let a loaded machine turn a store into a fail-open skip.
    overrides.setdefault("operation_timeout", 10.0)
    return Cache(client, prefix=prefix, settings=CacheSettings.model_validate(overrides))


class Counter:
    """A loader that counts its calls and returns `value` (or the call number)."""

    def __init__(self, value: Any = None, delay: float = 0.0) -> None:
        self.calls = 0
        self.value = value
        self.delay = delay

    async def __call__(self) -> Any:
        self.calls += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return self.calls if self.value is None else self.value


async def test_get_or_set_loads_once_then_hits(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    load = Counter({"a": [1, 2]})
    assert await cache.get_or_set(("user", 1), load, 30) == {"a": [1, 2]}
    assert await cache.get_or_set(("user", 1), load, 30) == {"a": [1, 2]}
    assert load.calls == 1
    assert cache.stats == CacheStats(hits=1, misses=1, loader_calls=1)
    key = cache.redis_key(("user", 1))
    assert key.startswith(f"{key_prefix}cache:")
    assert 29_000 < await redis_client.pttl(key) <= 30_000
    assert await redis_client.exists(cache.keys.lock_key(cache.keys.body(("user", 1)))) == 0


async def test_none_is_a_cached_value(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    load = Counter(None)

    async def none() -> None:
        await load()

    assert await cache.get_or_set("k", none, 30) is None
    assert await cache.get_or_set("k", none, 30) is None
    assert load.calls == 1


async def test_ttl_expires_entries(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix, early_refresh=0)
    load = Counter()
    assert await cache.get_or_set("k", load, 0.05) == 1
    await anyio.sleep(0.1)
    assert await cache.get_or_set("k", load, 0.05) == 2


async def test_default_ttl_and_bad_ttl(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix, default_ttl=77)
    assert await cache.set("k", 1)
    assert 76_000 < await redis_client.pttl(cache.redis_key("k")) <= 77_000
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            await cache.set("k", 1, bad)
        with pytest.raises(ValueError, match="ttl"):
            await cache.get_or_set("k", Counter(), bad)


async def test_get_set_delete(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    assert await cache.get("k") is None
    assert await cache.get("k", "dflt") == "dflt"
    assert await cache.set("k", [1, 2], 30)
    assert await cache.get("k") == [1, 2]
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.get("k") is None


async def test_loader_errors_reach_every_caller_and_nothing_is_cached(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    calls = 0

    async def boom() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        raise LookupError("no such user")

    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await cache.get_or_set("k", boom, 30)
        except LookupError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call)
    assert calls == 1
    assert len(errors) == 10
    assert await redis_client.get(cache.redis_key("k")) is None
    assert await cache.get_or_set("k", Counter(5), 30) == 5  # the lock was released


async def test_group_invalidation_is_one_version_bump(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    load = Counter()
    for i in range(3):
        assert await cache.get_or_set(("u", i), load, 30, group="users") == i + 1
    assert await cache.get_or_set("other", load, 30, group="posts") == 4
    await cache.invalidate_group("users")
    for i in range(3):
        assert await cache.get(("u", i), group="users") is None
    assert await cache.get("other", group="posts") == 4
    assert await cache.get_or_set(("u", 0), load, 30, group="users") == 5
    assert await cache.get_or_set(("u", 0), load, 30, group="users") == 5
    assert cache.stats.stale == 4  # three reads after the bump, then the refill's own read


async def test_a_fill_racing_an_invalidation_is_stale_on_arrival(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    started, release = anyio.Event(), anyio.Event()

    async def slow_old_read() -> str:
        started.set()
        await release.wait()
        return "old"

    result: list[str] = []

    async def fill() -> None:
        result.append(await cache.get_or_set("k", slow_old_read, 30, group="g"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fill)
            await started.wait()
            await cache.invalidate_group("g")
            release.set()
    assert result == ["old"]
    assert await cache.get("k", group="g") is None
    assert await cache.get_or_set("k", Counter("new"), 30, group="g") == "new"


async def test_a_lost_version_key_invalidates_its_group(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    assert await cache.set("k", 1, 30, group="g")
    assert await cache.get("k", group="g") == 1
    await redis_client.delete(cache.keys.version_key("g"))  # e.g. evicted under memory pressure
    assert await cache.get("k", group="g") is None


async def test_delete_stops_a_running_fill_from_writing_back(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    started, release = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "before delete"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cache.get_or_set, "k", slow, 30)
            await started.wait()
            await cache.delete("k")
            release.set()
    assert await redis_client.get(cache.redis_key("k")) is None


async def test_hot_keys_refresh_early_while_others_read_the_current_value(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix, early_refresh=10)
    load = Counter(delay=0.05)  # computation time 0.05 s x beta 10: refresh well before expiry
    assert await cache.get_or_set("k", load, 1.0) == 1
    seen: list[int] = []
    with anyio.fail_after(5):
        while cache.stats.early_refreshes == 0:
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(lambda: _append(seen, cache.get_or_set("k", load, 1.0)))
    assert load.calls == 2  # one refresh for all concurrent callers
    assert set(seen) <= {1, 2}
    assert 2 in seen
    assert 1 in seen  # readers during the refresh kept the still valid entry
    assert await cache.get("k") == 2


async def _append(out: list[Any], aw: Any) -> None:
    out.append(await aw)


async def test_early_refresh_can_be_disabled(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix, early_refresh=0)
    load = Counter(delay=0.02)
    assert await cache.get_or_set("k", load, 0.3) == 1
    # Up to the entry's expiry, however close to it, every call is a plain hit; the loader runs
    # again only after a miss.
    with anyio.fail_after(5):
        while True:
            misses = cache.stats.misses
            value = await cache.get_or_set("k", load, 0.3)
            if cache.stats.misses > misses:
                break
            assert value == 1
            await anyio.sleep(0.01)
    assert cache.stats.early_refreshes == 0
    assert load.calls == 2


async def test_disabled_cache_always_loads(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix, enabled=False)
    load = Counter()
    assert await cache.get_or_set("k", load, 30) == 1
    assert await cache.get_or_set("k", load, 30) == 2
    assert await cache.set("k", 1, 30) is False
    assert await cache.get("k", "d") == "d"
    assert await redis_client.exists(cache.redis_key("k")) == 0


async def test_metrics_hook_sees_every_counter(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    events: list[tuple[str, float]] = []

    def hook(event: str, value: float) -> None:
        events.append((event, value))
        if event == "hits":
            raise RuntimeError("a broken metrics backend must not break the cache")

    cache = Cache(redis_client, prefix=key_prefix, metrics=hook)
    load = Counter(delay=0.01)
    await cache.get_or_set("k", load, 30)
    await cache.get_or_set("k", load, 30)
    names = [e for e, _ in events]
    assert names == ["misses", "loader_calls", "hits"]
    assert events[1][1] >= 0.01  # the loader's duration


class Item(BaseModel):
    id: int
    name: str


async def test_cached_decorator_keys_by_qualname_and_arguments(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    calls: list[tuple[Any, ...]] = []

    @cached(cache, ttl=30)
    async def find(item_id: Any, *, suffix: str = "") -> Item:
        calls.append((item_id, suffix))
        return Item(id=len(calls), name=f"{item_id}{suffix}")

    first = await find(1)
    assert await find(1) == first
    assert await find(item_id=1) == first  # same bound arguments, same key
    assert await find(1, suffix="") == first
    assert isinstance(await find(1), Item)  # decoded as the return annotation
    await find("1")
    await find(1, suffix="x")
    assert calls == [(1, ""), ("1", ""), (1, "x")]
    assert find.key_for(1) == (f"{__name__}.{find.__qualname__}", 1, "")
    assert await find.invalidate(1) is True
    assert (await find(1)).id == 4


async def test_cached_keys_do_not_depend_on_how_arguments_are_passed(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    calls = 0

    @cached(cache, ttl=30)
    async def area(width: int, height: int = 1) -> int:
        nonlocal calls
        calls += 1
        return width * height

    keys = {area.key_for(2, 3), area.key_for(2, height=3), area.key_for(height=3, width=2)}
    assert len(keys) == 1
    assert area.key_for(2) == area.key_for(2, 1)
    assert area.key_for(2, 3) != area.key_for(3, 2)
    assert [await area(2, 3), await area(width=2, height=3), await area(2)] == [6, 6, 2]
    assert calls == 2


async def test_cached_methods_leave_self_out_of_the_key(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)

    class Repo:
        calls = 0

        @cached(lambda: cache, ttl=30, group="items")
        async def get(self, item_id: int) -> Item:
            Repo.calls += 1
            return Item(id=item_id, name="n")

    a, b = Repo(), Repo()
    assert await a.get(3) == Item(id=3, name="n")
    assert await b.get(3) == Item(id=3, name="n")
    assert Repo.calls == 1
    assert a.get.key_for(3) == b.get.key_for(3)
    await cache.invalidate_group("items")
    await a.get(3)
    assert Repo.calls == 2
    assert await b.get.invalidate(3) is True


async def test_cached_with_a_custom_key_shares_entries_with_direct_calls(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)

    @cached(cache, ttl=30, key=lambda uid: ("user", uid), type_=None)
    async def user(uid: int) -> Item:
        return Item(id=uid, name="u")

    assert await user(5) == Item(id=5, name="u")
    assert await cache.get(("user", 5)) == {"id": 5, "name": "u"}  # type_=None: plain data
    assert await cache.delete(("user", 5)) is True


async def test_cached_refuses_an_unresolvable_return_type(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)

    @cached(cache, ttl=30)
    async def f() -> NotDefinedAnywhere:  # type: ignore[name-defined]  # noqa: F821
        raise AssertionError("not called")

    with pytest.raises(TypeError, match="type_="):
        await f()


def test_cached_refuses_sync_functions() -> None:
    def sync() -> int:
        return 1

    with pytest.raises(TypeError, match="async"):
        cached(lambda: None)(sync)  # type: ignore[arg-type, return-value]
