"""Cache hit path against hand-written redis-py code, in one run.

    python benchmarks/bench_cache.py [--redis-url URL] [--rounds N] [--ops N]

Each round runs every variant for `--ops` sequential calls right next to its hand-written
baseline (`await redis.get(k)` + decode), alternating which goes first. The table shows the median
per-call time over rounds and the median of the per-round ratios variant/baseline: pairing
adjacent blocks cancels most of the noise of a shared machine.
Target: `get_or_set` within 1.2x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from pydantic import BaseModel

from core.cache import Cache, cached
from core.config import CacheSettings


class User(BaseModel):
    id: int
    name: str
    email: str
    active: bool
    tags: list[str]
    score: float


USER = User(
    id=42,
    name="Ada Lovelace",
    email="ada@example.com",
    active=True,
    tags=["admin", "math", "engines"],
    score=99.5,
)
TTL = 3600.0  # long enough that early refresh never triggers during the run

Op = Callable[[], Awaitable[object]]


async def _never() -> object:
    raise AssertionError("benchmark entry missing: the loader must not run on the hit path")


async def build(client: aioredis.Redis, prefix: str) -> dict[str, tuple[Op, str | None]]:
    """Variants by name, each with the baseline it is compared against."""
    json_cache = Cache(client, prefix=prefix, settings=CacheSettings.model_validate({}))
    msgspec_cache = Cache(
        client,
        prefix=prefix,
        settings=CacheSettings.model_validate({"codec": "msgspec", "namespace": "mp"}),
    )
    raw_key = f"{prefix}raw"
    await client.set(raw_key, json.dumps(USER.model_dump()))
    data = USER.model_dump()
    await json_cache.set("plain", data, TTL)
    await json_cache.set("model", USER, TTL)
    await json_cache.set("grouped", data, TTL, group="users")
    await msgspec_cache.set("model", USER, TTL)
    await msgspec_cache.set("plain", data, TTL)

    @cached(json_cache, ttl=TTL, key=lambda user_id: "model")
    async def load_user(user_id: int) -> User:
        raise AssertionError("benchmark entry missing: the loader must not run on the hit path")

    async def base_json() -> object:
        return json.loads(await client.get(raw_key))  # type: ignore[arg-type]

    async def base_model() -> object:
        return User.model_validate_json(await client.get(raw_key))  # type: ignore[arg-type]

    return {
        "redis.get + json.loads": (base_json, None),
        "get_or_set (json, plain)": (
            lambda: json_cache.get_or_set("plain", _never, TTL),
            "redis.get + json.loads",
        ),
        "get_or_set (json, group)": (
            lambda: json_cache.get_or_set("grouped", _never, TTL, group="users"),
            "redis.get + json.loads",
        ),
        "get_or_set (msgspec, plain)": (
            lambda: msgspec_cache.get_or_set("plain", _never, TTL),
            "redis.get + json.loads",
        ),
        "redis.get + model_validate_json": (base_model, None),
        "get_or_set (json, model)": (
            lambda: json_cache.get_or_set("model", _never, TTL, type_=User),
            "redis.get + model_validate_json",
        ),
        "@cached (json, model)": (
            lambda: load_user(42),
            "redis.get + model_validate_json",
        ),
        "get_or_set (msgspec, model)": (
            lambda: msgspec_cache.get_or_set("model", _never, TTL, type_=User),
            "redis.get + model_validate_json",
        ),
    }


async def _block(op: Op, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        await op()
    return (time.perf_counter() - start) / ops * 1e6


async def run(url: str, rounds: int, ops: int) -> None:
    client = aioredis.Redis.from_url(url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        variants = await build(client, prefix)
        for op, _ in variants.values():  # warm up connections, adapters and scripts
            for _ in range(200):
                await op()
        compared = [name for name, (_, base) in variants.items() if base is not None]
        times: dict[str, list[float]] = {name: [] for name in variants}
        ratios: dict[str, list[float]] = {name: [] for name in compared}
        for r in range(rounds):
            shift = r % len(compared)
            for name in compared[shift:] + compared[:shift]:
                op, base = variants[name]
                assert base is not None
                # Each variant runs right next to its baseline, in alternating order.
                if r % 2:
                    t_op = await _block(op, ops)
                    t_base = await _block(variants[base][0], ops)
                else:
                    t_base = await _block(variants[base][0], ops)
                    t_op = await _block(op, ops)
                times[name].append(t_op)
                times[base].append(t_base)
                ratios[name].append(t_op / t_base)
        print(f"rounds={rounds} ops/block={ops} redis={url}")
        print(f"{'variant':34} {'median µs/op':>13} {'ratio':>7}")
        for name in variants:
            ratio = statistics.median(ratios[name]) if name in ratios else 1.0
            print(f"{name:34} {statistics.median(times[name]):13.1f} {ratio:6.3f}x")
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(run(args.redis_url, args.rounds, args.ops))


if __name__ == "__main__":
    main()
