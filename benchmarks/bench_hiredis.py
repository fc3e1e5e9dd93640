"""What hiredis would buy: the cache hit path on redis-py's C reply parser against its Python one.

    pip install hiredis
    python benchmarks/bench_hiredis.py [--rounds N] [--ops N]

redis-py uses hiredis whenever it is installed. Here both parsers run in the same process: two
managers built from the same settings, one whose connections are forced onto the pure-Python
RESP3 parser, each filled through `get_or_set` and then read back (a hit) in blocks side by
side, as `bench_cache.py` does, for a small value and a larger one (a list of 200 small dicts).
A hit's reply is one bulk string, so the parser has little to do: dualcore ships no `hiredis`
extra, and a service that wants it installs it (redis-py picks it up by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from _common import REDIS_URL, Op, Pair, paired_rounds, sqlalchemy_url
from redis._parsers import _AsyncRESP3Parser
from redis.utils import HIREDIS_AVAILABLE

from core.config import Settings
from core.redis_client import RedisManager

SMALL = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "math"], "score": 99.5}
LARGE = [dict(SMALL, id=i) for i in range(200)]
PAIRS = [
    Pair("get_or_set hit, small (hiredis)", "get_or_set hit, small (Python parser)"),
    Pair("get_or_set hit, 200 rows (hiredis)", "get_or_set hit, 200 rows (Python parser)"),
]


def _manager(prefix: str, *, python_parser: bool) -> RedisManager:
    settings = Settings(
        _env_file=None,
        app={"name": "bench", "environment": "production"},
        database={"url": sqlalchemy_url()},
        redis={"url": REDIS_URL, "key_prefix": prefix},
    )
    manager = RedisManager(settings)
    if python_parser:
        # Before the first connection: every connection of the pool is built with these.
        manager.client.connection_pool.connection_kwargs["parser_class"] = _AsyncRESP3Parser
    return manager


async def _never() -> object:
    raise AssertionError("benchmark entry missing: the loader must not run on the hit path")


async def measure(rounds: int, ops: int) -> tuple[dict[str, float], dict[Pair, float]]:
    """(median µs per call by operation, median ratio hiredis/Python by pair)."""
    prefix = f"bench_hiredis_{uuid.uuid4().hex[:8]}:"
    managers = {
        "hiredis": _manager(prefix, python_parser=False),
        "Python parser": _manager(prefix, python_parser=True),
    }
    try:
        for m in managers.values():
            await m.start()
        for name, value in (("small", SMALL), ("200 rows", LARGE)):

            async def load(value: Any = value) -> Any:
                return value

            await managers["hiredis"].cache.get_or_set(name, load, 3600)
        ops_by_name: dict[str, Op] = {}
        for parser, m in managers.items():
            parser_class = type(await _parser_of(m))
            expected = "_AsyncHiredisParser" if parser == "hiredis" else "_AsyncRESP3Parser"
            assert parser_class.__name__ == expected, (parser, parser_class)
            for name, value in (("small", SMALL), ("200 rows", LARGE)):
                op_name = f"get_or_set hit, {name} ({parser})"
                ops_by_name[op_name] = lambda cache=m.cache, key=name: cache.get_or_set(
                    key, _never, 3600
                )
                assert await ops_by_name[op_name]() == value
        return await paired_rounds(ops_by_name, PAIRS, rounds, ops)
    finally:
        client = managers["hiredis"].client
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        for m in managers.values():
            await m.close()


async def _parser_of(manager: RedisManager) -> Any:
    pool = manager.client.connection_pool
    connection = await pool.get_connection()
    try:
        return connection._parser
    finally:
        await pool.release(connection)


async def _main(rounds: int, ops: int) -> None:
    times, ratios = await measure(rounds, ops)
    print(f"rounds={rounds} ops/block={ops} redis={REDIS_URL}")
    for name, t in times.items():
        print(f"{name:42} {t:8.1f} µs/op")
    for pair, ratio in ratios.items():
        print(f"{pair.variant:42} {ratio:6.3f}x  vs {pair.baseline}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    if not HIREDIS_AVAILABLE:
        raise SystemExit("hiredis is not installed: pip install hiredis")
    asyncio.run(_main(args.rounds, args.ops))


if __name__ == "__main__":
    main()
