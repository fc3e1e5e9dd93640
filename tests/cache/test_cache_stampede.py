"""Stampede protection: one loader call per key, in one process and across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from core.cache import Cache
from core.config import CacheSettings

pytestmark = pytest.mark.anyio

PROCESSES = 4
CALLS_PER_PROCESS = 25


def make(client: aioredis.Redis, prefix: str, **overrides: Any) -> Cache:
    # A generous operation timeout: on a loaded machine a Redis call can take longer than the
    # default 0.25 s, and the cache then (correctly) fails open: it loads without the lock, or
    # does not store. These tests are about the fill and its lock, not about timeouts.
    settings = CacheSettings.model_validate({"operation_timeout": 10.0, **overrides})
    return Cache(client, prefix=prefix, settings=settings)


async def _until(check: Callable[[], bool]) -> None:
    """Poll `check` until it holds; fail after 5 seconds."""
    with anyio.fail_after(5):
        while True:
            if check():
                return
            await anyio.sleep(0.005)


async def test_200_concurrent_cold_calls_run_the_loader_once(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        return {"v": 42}

    results: list[Any] = []

    async def call() -> None:
        results.append(await cache.get_or_set(("hot", 1), load, 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(call)
    assert calls == 1
    assert results == [{"v": 42}] * 200
    assert cache.stats.loader_calls == 1
    assert await cache.get(("hot", 1)) == {"v": 42}


async def test_cancelling_waiters_cancels_neither_the_load_nor_the_others(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    started, release = anyio.Event(), anyio.Event()
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "value"

    results: dict[int, Any] = {}
    scopes = [anyio.CancelScope() for _ in range(5)]

    async def call(i: int) -> None:
        with scopes[i]:
            results[i] = await cache.get_or_set("k", load, 30)
            return
        results[i] = "cancelled"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(call, i)
            await started.wait()
            await anyio.sleep(0.01)  # every caller is now waiting on the one load
            scopes[0].cancel()  # the caller whose miss started the load
            scopes[3].cancel()
            await _until(lambda: results.get(0) == results.get(3) == "cancelled")
            release.set()
    assert calls == 1
    assert results == {0: "cancelled", 1: "value", 2: "value", 3: "cancelled", 4: "value"}
    assert await cache.get("k") == "value"  # the load finished and was stored


async def test_a_load_whose_waiters_all_left_still_fills_the_cache(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    started, release = anyio.Event(), anyio.Event()

    async def load() -> str:
        started.set()
        await release.wait()
        return "value"

    # The only caller leaves once the load is running (not before: cancelled during its first
    # lookup, it would have started no load at all).
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cache.get_or_set, "k", load, 30)
            await started.wait()
            tg.cancel_scope.cancel()
    assert await cache.get("k") is None
    release.set()
    with anyio.fail_after(5):
        while True:  # the detached load finishes on its own
            if (value := await cache.get("k")) is not None:
                break
            await anyio.sleep(0.01)
    assert value == "value"
    assert cache.stats.errors == 0


async def test_aclose_cancels_running_fills_and_releases_their_locks(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    started = anyio.Event()

    async def forever() -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"

    lock_key = cache.keys.lock_key(cache.keys.body("k"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as waiter:
                tg.start_soon(cache.get_or_set, "k", forever, 30)
                await started.wait()
                assert await redis_client.exists(lock_key) == 1
                await cache.aclose()
            waiter.cancel()
            tg.cancel_scope.cancel()
    assert await redis_client.exists(lock_key) == 0
    assert await redis_client.get(cache.redis_key("k")) is None


async def test_a_waiting_process_takes_the_value_another_process_stored(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    ours, theirs = make(redis_client, key_prefix), make(redis_client, key_prefix)
    lock_key = ours.keys.lock_key(ours.keys.body("k"))
    await redis_client.set(lock_key, "their-token", px=10_000)
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        return "ours"

    async def other_process_fills() -> None:
        await _until(lambda: ours.stats.lock_waits == 1)  # ours is waiting for the lock
        assert await theirs.set("k", "theirs", 30)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_process_fills)
            assert await ours.get_or_set("k", load, 30) == "theirs"
    assert calls == 0
    assert ours.stats.lock_waits == 1
    assert await redis_client.get(lock_key) == b"their-token"  # never released by a non-owner


async def test_a_waiter_takes_over_when_the_holder_gives_up(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix)
    lock_wait = cache.settings.lock_wait
    lock_key = cache.keys.lock_key(cache.keys.body("k"))
    await redis_client.set(lock_key, "their-token", px=10_000)
    released = 0.0

    async def holder_fails() -> None:
        nonlocal released
        await _until(lambda: cache.stats.lock_waits == 1)  # ours is waiting for the lock
        await redis_client.delete(lock_key)  # released without storing a value
        released = time.monotonic()

    async def load() -> str:
        return "ours"

    with anyio.fail_after(lock_wait + 5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder_fails)
            assert await cache.get_or_set("k", load, 30) == "ours"
    assert time.monotonic() - released < lock_wait / 2  # taken over, not waited out
    assert cache.stats.lock_waits == 1
    assert cache.stats.lock_timeouts == 0
    assert await redis_client.exists(lock_key) == 0


async def test_a_stuck_holder_delays_a_fill_by_lock_wait_at_most(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    lock_wait = 0.2
    cache = make(redis_client, key_prefix, lock_wait=lock_wait)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))
    await redis_client.set(lock_key, "stuck-token", px=60_000)

    async def load() -> str:
        return "ours"

    start = time.monotonic()
    with anyio.fail_after(5):
        assert await cache.get_or_set("k", load, 30) == "ours"
    # Waited out lock_wait, not the stuck lock's 60 s (the rest is room for a busy machine).
    assert lock_wait <= time.monotonic() - start < lock_wait + 1.0
    assert cache.stats.lock_timeouts == 1
    assert await cache.get("k") == "ours"  # stored even without the lock
    assert await redis_client.get(lock_key) == b"stuck-token"


async def test_a_delete_in_another_process_stops_a_running_fill_from_writing_back(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    filler, deleter = make(redis_client, key_prefix), make(redis_client, key_prefix)
    lock_key = filler.keys.lock_key(filler.keys.body("k"))
    started, release = anyio.Event(), anyio.Event()

    async def read_before_the_write() -> str:
        started.set()
        await release.wait()
        return "old row"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(filler.get_or_set, "k", read_before_the_write, 30)
            await started.wait()
            assert await deleter.delete("k") is False  # the write committed; drop the entry
            release.set()
    assert await redis_client.get(filler.redis_key("k")) is None
    assert await redis_client.exists(lock_key) == 0

    async def read_after_the_write() -> str:
        return "new row"

    assert await deleter.get_or_set("k", read_after_the_write, 30) == "new row"


async def test_a_fill_that_outlived_its_lock_still_stores(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix, lock_ttl=0.05)

    async def slow() -> str:
        await anyio.sleep(0.15)
        return "v"

    with anyio.fail_after(5):
        assert await cache.get_or_set("k", slow, 30) == "v"
    assert await cache.get("k") == "v"


async def test_a_fill_whose_lock_was_taken_over_leaves_the_entry_to_the_new_holder(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cache = make(redis_client, key_prefix, lock_ttl=0.05)
    lock_key = cache.keys.lock_key(cache.keys.body("k"))

    async def slow() -> str:
        await anyio.sleep(0.1)  # our lock expires meanwhile and another filler takes it
        await redis_client.set(lock_key, "successor", px=10_000)
        return "ours"

    with anyio.fail_after(5):
        assert await cache.get_or_set("k", slow, 30) == "ours"
    assert await redis_client.get(cache.redis_key("k")) is None
    assert await redis_client.get(lock_key) == b"successor"


async def test_a_waiter_that_takes_over_a_just_released_lock_does_not_load_again(
    redis_client: aioredis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The holder stores the entry and releases its lock right between the waiter's last look
    # and its next try for the lock: the waiter gets the lock, and must look once more.
    holder, waiter = make(redis_client, key_prefix), make(redis_client, key_prefix)
    lock_key = waiter.keys.lock_key(waiter.keys.body("k"))
    await redis_client.set(lock_key, "holder-token", px=10_000)
    acquire = waiter._acquire
    tries = 0

    async def acquire_after_the_holder_finished(lkey: str) -> str | None:
        nonlocal tries
        tries += 1
        if tries == 2:
            await holder.set("k", "from the holder", 30)
            await redis_client.delete(lock_key)
        return await acquire(lkey)

    monkeypatch.setattr(waiter, "_acquire", acquire_after_the_holder_finished)
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "loaded again"

    with anyio.fail_after(5):
        assert await waiter.get_or_set("k", load, 30) == "from the holder"
    assert (tries, loads) == (2, 0)
    assert await redis_client.exists(lock_key) == 0  # the waiter released what it took


def _process_main(url: str, prefix: str, counter: str, barrier: Any) -> None:
    asyncio.run(_process_calls(url, prefix, counter, barrier))


async def _process_calls(url: str, prefix: str, counter: str, barrier: Any) -> None:
    client = aioredis.Redis.from_url(url)
    cache = make(client, prefix)

    async def load() -> str:
        await client.incr(counter)
        await asyncio.sleep(0.3)  # long enough that every process misses while it runs
        return "shared"

    try:
        await client.ping()  # connect before the barrier so all start together
        barrier.wait(timeout=30)
        results = await asyncio.wait_for(
            asyncio.gather(*(cache.get_or_set("k", load, 30) for _ in range(CALLS_PER_PROCESS))),
            timeout=20,
        )
        if results != ["shared"] * CALLS_PER_PROCESS:
            raise SystemExit(f"unexpected results {results!r}")
        if cache.stats.errors or cache.stats.lock_timeouts:
            raise SystemExit(f"Redis errors or lock timeouts, not a lock test: {cache.stats!r}")
    finally:
        await cache.aclose()
        await client.aclose()


def test_processes_sharing_redis_run_the_loader_once_in_total(
    redis_url: str, key_prefix: str
) -> None:
    import redis

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    counter = f"{key_prefix}loader-calls"
    procs = [
        ctx.Process(target=_process_main, args=(redis_url, key_prefix, counter, barrier))
        for _ in range(PROCESSES)
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        assert client.get(counter) == b"1"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        keys = list(client.scan_iter(match=f"{key_prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
