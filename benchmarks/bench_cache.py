"""Cache hit path against hand-written redis-py code, in one run.

    python benchmarks/bench_cache.py [--rounds N] [--ops N]

The cache is the one the apps get: `RedisManager(settings).cache`, with its circuit breaker,
its metrics hook set the way the runtime sets it (`manager.cache_metrics =
metrics.cache("default")` before first use), and entries written by real fills
(`get_or_set` with a loader that takes time, so every entry carries its load time and each hit
runs the early-refresh check). The baseline is what a user writes instead: a plain
`redis.asyncio.Redis.from_url(...)`, `await redis.get(k)` + decode. Information pairs split
the figure: the baseline's code on the cache's own client, and on a plain client without any
socket timeout (redis-py's default is 5 s), against which the cache's client prices its bounds.

Each round runs every variant for `--ops` sequential calls right next to its baseline,
alternating which goes first. The table shows the median per-call time over rounds and the
median of the per-round ratios variant/baseline: pairing adjacent blocks cancels most of the
noise of a shared machine. Targets: `get_or_set` within 1.10x; a hit served by the local tier
(`CACHE__LOCAL_TIER=true`) within 0.2x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from _common import REDIS_URL, Op, Pair, paired_rounds, sqlalchemy_url
from pydantic import BaseModel

from core.cache import cached
from core.config import Settings
from core.observability import Metrics
from core.redis_client import RedisManager


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
TTL = 3600.0
"""Long enough that early refresh (probability ~ load time / time left) never fires in a run."""
LOAD_TIME = 0.002
"""What a fill's loader takes (a database read, roughly): recorded in the entry."""

BASE_JSON = "redis.get + json.loads"
BASE_MODEL = "redis.get + model_validate_json"
CORE_CLIENT_JSON = "core client: redis.get + json.loads"
"""The baseline's code on the client the cache uses (`RedisManager(settings).client`: blocking
pool, retries, timeouts). Against the baseline it prices the client's configuration; against it,
`get_or_set` prices the cache layer alone."""
UNBOUNDED_JSON = "unbounded client: redis.get + json.loads"
"""The baseline's code on a plain client with `socket_timeout=None` (redis-py's default is 5 s):
no bound on a reply at all. Against it, the cache's client prices what its bounds cost."""
SEND_READ = "raw connection: send, read"
SEND_TURN_READ = "raw connection: send, loop turn, read"
TURN = Pair(SEND_TURN_READ, SEND_READ)
"""The same GET on one of the baseline's connections, with and without one turn of the event
loop between sending and reading. Not a cost of any variant: it shows what this machine charges
to wake a loop that blocked for the reply. Where it is well below 1x, a loop turn the client
spends before reading (redis-py's write under `asyncio.wait_for`, a task of its own before
Python 3.12) is partly paid back by a reply already there when the loop polls."""
JSON_PLAIN = Pair("get_or_set (json, plain)", BASE_JSON)
LOCAL_TIER = Pair("get_or_set (json, local tier)", BASE_JSON)
"""A hit served from the in-process tier (`CACHE__LOCAL_TIER=true`): target <= 0.2x."""
JSON_MODEL = Pair("get_or_set (json, model)", BASE_MODEL)
PAIRS = [
    JSON_PLAIN,
    Pair("get_or_set (json, group)", BASE_JSON),
    Pair("get_or_set (msgspec, plain)", BASE_JSON),
    JSON_MODEL,
    Pair("@cached (json, model)", BASE_MODEL),
    Pair("get_or_set (msgspec, model)", BASE_MODEL),
    Pair(CORE_CLIENT_JSON, BASE_JSON),
    Pair(CORE_CLIENT_JSON, UNBOUNDED_JSON),
    Pair("get_or_set (json, plain)", CORE_CLIENT_JSON),
    TURN,
    LOCAL_TIER,
]
TARGETS = {JSON_PLAIN: "json dict", JSON_MODEL: "pydantic model"}
"""The pairs the summary judges, with what they decode."""


async def _never() -> object:
    raise AssertionError("benchmark entry missing: the loader must not run on the hit path")


def manager(prefix: str, metrics: Metrics, name: str, **cache: Any) -> RedisManager:
    """A manager as the runtime builds it, its cache hooked to metrics as `_observe` does."""
    settings = Settings(
        _env_file=None,
        app={"name": "bench", "environment": "production"},
        database={"url": sqlalchemy_url()},
        redis={"url": REDIS_URL, "key_prefix": prefix},
        cache=cache,
    )
    found = RedisManager(settings)
    found.cache_metrics = metrics.cache(name)
    return found


class Variants:
    """The operations by name and what they hold open."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.client = aioredis.Redis.from_url(REDIS_URL)
        self.unbounded = aioredis.Redis.from_url(REDIS_URL, socket_timeout=None)
        self.metrics = Metrics()
        self.managers = [
            manager(prefix, self.metrics, "default"),
            manager(prefix, self.metrics, "msgspec", codec="msgspec", namespace="mp"),
            manager(prefix, self.metrics, "local", namespace="lt", local_tier=True),
        ]

    def events(self, cache: str, event: str) -> float:
        """How many `event`s the metrics hook of `cache` has counted."""
        labels = {"cache": cache, "event": event}
        return self.metrics.registry.get_sample_value("cache_events_total", labels) or 0.0

    async def build(self) -> dict[str, Op]:
        """Fill the entries through the caches themselves, then return the operations."""
        client = self.client
        json_cache, msgspec_cache, local_cache = (m.cache for m in self.managers)
        for m in self.managers:
            await m.start()
        raw_key = f"{self.prefix}raw"
        await client.set(raw_key, json.dumps(USER.model_dump()))
        data = USER.model_dump()

        def loader(value: object) -> Op:
            async def load() -> object:
                await asyncio.sleep(LOAD_TIME)
                return value

            return load

        await json_cache.get_or_set("plain", loader(data), TTL)
        await json_cache.get_or_set("model", loader(USER), TTL, type_=User)
        await json_cache.get_or_set("grouped", loader(data), TTL, group="users")
        await msgspec_cache.get_or_set("model", loader(USER), TTL, type_=User)
        await msgspec_cache.get_or_set("plain", loader(data), TTL)
        await local_cache.get_or_set("plain", loader(data), TTL)
        listener = local_cache.invalidations
        if listener is None or not await listener.wait_live(10):
            raise RuntimeError("the local tier's invalidation subscription did not come up")
        await local_cache.get_or_set("plain", _never, TTL)  # read from Redis, kept locally
        # Real fills, seen by the metrics hooks (their load time is in each entry).
        assert self.events("default", "loader_calls") == 3
        assert self.events("msgspec", "loader_calls") == 2

        @cached(json_cache, ttl=TTL, key=lambda user_id: "model")
        async def load_user(user_id: int) -> User:
            raise AssertionError("benchmark entry missing: the loader must not run on the hit path")

        async def base_json() -> object:
            return json.loads(await client.get(raw_key))  # type: ignore[arg-type]

        async def base_model() -> object:
            return User.model_validate_json(await client.get(raw_key))  # type: ignore[arg-type]

        core_client = self.managers[0].client

        unbounded = self.unbounded

        async def unbounded_json() -> object:
            return json.loads(await unbounded.get(raw_key))  # type: ignore[arg-type]

        async def core_client_json() -> object:
            return json.loads(await core_client.get(raw_key))

        pool = client.connection_pool

        async def raw_get(turn: bool) -> object:
            conn = await pool.get_connection()
            try:
                await conn.send_command("GET", raw_key)
                if turn:
                    await asyncio.sleep(0)
                return json.loads(await conn.read_response())
            finally:
                await pool.release(conn)

        ops: dict[str, Op] = {
            BASE_JSON: base_json,
            SEND_READ: lambda: raw_get(False),
            SEND_TURN_READ: lambda: raw_get(True),
            BASE_MODEL: base_model,
            CORE_CLIENT_JSON: core_client_json,
            UNBOUNDED_JSON: unbounded_json,
            "get_or_set (json, plain)": lambda: json_cache.get_or_set("plain", _never, TTL),
            "get_or_set (json, group)": lambda: json_cache.get_or_set(
                "grouped", _never, TTL, group="users"
            ),
            "get_or_set (msgspec, plain)": lambda: msgspec_cache.get_or_set("plain", _never, TTL),
            "get_or_set (json, model)": lambda: json_cache.get_or_set(
                "model", _never, TTL, type_=User
            ),
            "@cached (json, model)": lambda: load_user(42),
            "get_or_set (msgspec, model)": lambda: msgspec_cache.get_or_set(
                "model", _never, TTL, type_=User
            ),
            LOCAL_TIER.variant: lambda: local_cache.get_or_set("plain", _never, TTL),
        }
        for name, op in ops.items():  # every variant really hits, with the expected value
            value = await op()
            assert value in (data, USER), f"{name}: {value!r}"
        assert self.events("default", "hits") == 4 and self.events("msgspec", "hits") == 2
        if self.events("local", "local_hits") < 1:
            raise RuntimeError("the local tier variant was not served from memory")
        return ops

    async def close(self) -> None:
        """Remove the keys, close the managers and the client."""
        try:
            keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await self.client.delete(*keys)
        finally:
            for m in self.managers:
                await m.close()
            await self.client.aclose()
            await self.unbounded.aclose()


async def measure(
    rounds: int, ops: int, samples: dict[Pair, list[float]] | None = None
) -> tuple[dict[str, float], dict[Pair, float]]:
    """(median µs per call by operation, median ratio by pair); per-round ratios into
    `samples` when given."""
    variants = Variants(f"bench_cache_{uuid.uuid4().hex[:8]}:")
    try:
        built = await variants.build()
        return await paired_rounds(built, PAIRS, rounds, ops, samples=samples)
    finally:
        await variants.close()


async def _main(rounds: int, ops: int) -> None:
    times, ratios = await measure(rounds, ops)
    print(f"rounds={rounds} ops/block={ops} redis={REDIS_URL}")
    print(f"{'variant':34} {'median µs/op':>13} {'ratio':>7}")
    for name in (BASE_JSON, BASE_MODEL):
        print(f"{name:34} {times[name]:13.1f}")
    for pair, ratio in ratios.items():
        print(f"{pair.variant:34} {times[pair.variant]:13.1f} {ratio:6.3f}x  vs {pair.baseline}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.ops))


if __name__ == "__main__":
    main()
