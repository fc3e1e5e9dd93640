"""A process reading one cache key through the local tier as fast as it can, for the coherence
tests: `python tests/support/tier_reader.py <redis url> <key prefix> <key> <group>`.

Prints `ready` once the value it serves comes from its own tier, then reads until it is served
the value "stop", and prints one JSON line: for each value served, the last time (monotonic,
which is system-wide on Linux) it was served, and how many reads its tier answered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis.asyncio as aioredis

from core.cache import Cache
from core.config import CacheSettings


async def main(url: str, prefix: str, key: str, group: str) -> None:
    client = aioredis.Redis.from_url(url)
    settings = CacheSettings(local_tier=True, local_ttl=60)
    cache = Cache(client, prefix=prefix, settings=settings)

    async def missing() -> str:
        return "missing"

    async def read() -> object:
        return await cache.get_or_set(key, missing, ttl=60, group=group or None)

    await read()
    assert cache.invalidations is not None
    if not await cache.invalidations.wait_live(10):
        raise SystemExit("the invalidation subscription never came up")
    while cache.stats.local_hits == 0:
        await read()
        await asyncio.sleep(0.001)
    print("ready", flush=True)
    last_served: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = json.dumps(await read())
        last_served[value] = time.monotonic()
        if value == '"stop"':
            break
        # Lets the invalidation listener run between reads, as any other task would.
        await asyncio.sleep(0)
    print(json.dumps({"last_served": last_served, "local_hits": cache.stats.local_hits}))
    await cache.aclose()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
