"""Where a cache hit's CPU goes: the hit path with Redis's reply served from memory.

    python benchmarks/profile_cache.py [--rounds N] [--ops N]

A hit from Redis is one round trip plus the cache's own work, and on a shared machine the round
trip's noise hides changes of a microsecond. Here the client's `execute_command` answers at
once with the stored bytes, so what is left is CPU only, steady enough to price each part. The
baseline is the hand-written code on the same in-memory answer (`json.loads(await get(key))`);
the variants are the cache as the apps get it (`RedisManager(settings).cache` with its breaker
and metrics hook), then with one part off at a time, then a bare `Cache(client)`. On Python 3.11
and newer a pair also prices one `SharedTimeout` bound (two per hit: the cache's and the
connection's read bound) against `asyncio.timeout`. Needs neither Redis nor PostgreSQL.

A hit costs more than these figures in a real round trip: the code runs with caches cooled by
the kernel and the event loop in between, so read them as shares, not as the real difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import REDIS_URL, Op, Pair, paired_rounds, sqlalchemy_url

from core._aio import SharedTimeout
from core.cache import Cache
from core.cache.envelope import pack
from core.config import Settings
from core.observability import Metrics
from core.redis_client import RedisManager

VALUE = {
    "id": 42,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "active": True,
    "tags": ["admin", "math", "engines"],
    "score": 99.5,
}
BASELINE = "hand-written: json.loads(await get(key))"
AS_SHIPPED = "get_or_set (as the apps get it)"
NO_HOOK = "get_or_set, no metrics hook"
NO_EARLY = "get_or_set, early refresh off"
BARE = "Cache(client): no breaker, no hook"
BOUND = "SharedTimeout bound, one no-op await"
TIMEOUT = "asyncio.timeout, one no-op await"
PAIRS = [Pair(AS_SHIPPED, BASELINE), Pair(NO_HOOK, BASELINE), Pair(NO_EARLY, BASELINE)]
PAIRS += [Pair(BARE, BASELINE)]
if sys.version_info >= (3, 11):
    PAIRS.append(Pair(BOUND, TIMEOUT))


def _answered_from_memory(cache: Cache) -> None:
    """Make the cache's client answer every command at once with the entry of key "k"."""
    raw = pack(cache.codec.codec_id, time.time() + 3600.0, 0.002, b"", cache.codec.encode(VALUE))

    async def execute_command(*args: Any, **options: Any) -> bytes:
        return raw

    cache.client.execute_command = execute_command  # type: ignore[method-assign]


def _manager(metrics: Metrics | None, **cache: Any) -> RedisManager:
    settings = Settings(
        _env_file=None,
        app={"name": "bench", "environment": "production"},
        database={"url": sqlalchemy_url()},
        redis={"url": REDIS_URL, "key_prefix": "profile_cache:"},
        cache=cache,
    )
    manager = RedisManager(settings)
    if metrics is not None:
        manager.cache_metrics = metrics.cache("default")
    return manager


def build() -> dict[str, Op]:
    """The operations by name; no connection is ever opened."""
    metrics = Metrics()
    caches = {
        AS_SHIPPED: _manager(metrics).cache,
        NO_HOOK: _manager(None).cache,
        NO_EARLY: _manager(metrics, early_refresh=0.0).cache,
    }
    shipped = caches[AS_SHIPPED]
    caches[BARE] = Cache(shipped.client, prefix="profile_cache:", settings=shipped.settings)
    for cache in caches.values():
        _answered_from_memory(cache)
    stored = json.dumps(VALUE).encode()

    async def get(key: str) -> bytes:
        return stored

    async def baseline() -> object:
        return json.loads(await get("profile_cache:k"))

    async def never() -> object:
        raise AssertionError("the loader must not run on the hit path")

    def hit(cache: Cache) -> Callable[[], Awaitable[object]]:
        return lambda: cache.get_or_set("k", never, 3600.0)

    ops: dict[str, Op] = {BASELINE: baseline, **{name: hit(c) for name, c in caches.items()}}
    if sys.version_info >= (3, 11):
        bound = SharedTimeout(0.25)

        async def nothing() -> None:
            pass

        async def shared_bound() -> None:
            with bound():
                await nothing()

        async def asyncio_timeout() -> None:
            async with asyncio.timeout(0.25):
                await nothing()

        ops[BOUND] = shared_bound
        ops[TIMEOUT] = asyncio_timeout
    return ops


async def _main(rounds: int, ops: int) -> None:
    built = build()
    for name, op in built.items():  # every cache variant really hits, with the value
        value = await op()
        assert value in (VALUE, None), f"{name}: {value!r}"
    times, ratios = await paired_rounds(built, PAIRS, rounds, ops)
    print(f"rounds={rounds} ops/block={ops}, Redis answered from memory")
    print(f"{'operation':42} {'median µs/op':>13} {'ratio':>7} {'+µs':>6}")
    print(f"{BASELINE:42} {times[BASELINE]:13.2f}")
    for pair, ratio in ratios.items():
        extra = times[pair.variant] - times[pair.baseline]
        print(
            f"{pair.variant:42} {times[pair.variant]:13.2f} {ratio:6.3f}x {extra:+6.2f}"
            f"  vs {pair.baseline}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.ops))


if __name__ == "__main__":
    main()
