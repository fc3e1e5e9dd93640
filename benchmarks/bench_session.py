"""Primary-key read in one task: dualcore sessions against raw asyncpg and hand-written SQLAlchemy.

    python benchmarks/bench_session.py [--rounds N] [--ops N]

Variants (each reads one `users` row by primary key, rotating over the data set's ids):
- `asyncpg`: `pool.acquire()` + `fetchrow`, no library at all;
- `seed style`: `async_sessionmaker` per request on an engine with `pool_pre_ping=True`,
  `session.get()` then `commit()`, as the seed's hand-written services do;
- `hand rw (same engine)`: the same hand-written code on an engine built with dualcore's
  read-write options (what `get_session()` is compared with);
- `dualcore read-only` / `dualcore read-write`: `db.get_session(read_only=...)` + `session.get()`.
Targets: read-only within 1.5x asyncpg; read-write within 1.05x the hand-written code.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

import asyncpg
from _common import Dataset, Op, Pair, asyncpg_dsn, paired_rounds, sqlalchemy_url
from pgwire import counting_proxy
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from core.database import DatabaseManager
from examples.users.models import User

SQL = "SELECT id, email, name, created_at, updated_at FROM users WHERE id = $1"

PAIRS = [
    Pair("seed style", "asyncpg"),
    Pair("dualcore read-only", "asyncpg"),
    Pair("dualcore read-write", "hand rw (same engine)"),
    Pair("hand ro (same engine)", "asyncpg"),
]


async def build(ds: Dataset) -> tuple[dict[str, Op], list[Any]]:
    """The operations by name, and the resources to close afterwards."""
    ids = itertools.cycle(ds.ids[:1000])
    pool = await asyncpg.create_pool(
        asyncpg_dsn(ds.database_url),
        min_size=1,
        max_size=10,
        server_settings={"search_path": ds.schema},
    )
    seed_engine = create_async_engine(
        sqlalchemy_url(ds.database_url),
        pool_pre_ping=True,
        connect_args={"server_settings": {"search_path": ds.schema}},
    )
    seed_sessions = async_sessionmaker(seed_engine, expire_on_commit=False)
    db = DatabaseManager(ds.settings())
    await db.start()
    # Hand-written code on an engine with exactly the options dualcore uses for writes.
    hand_engine = create_async_engine(sqlalchemy_url(ds.database_url), **db._engine_kwargs(False))
    hand_sessions = async_sessionmaker(hand_engine, expire_on_commit=False)
    # And on an engine with exactly the options of dualcore's read-only engine.
    hand_ro_engine = create_async_engine(sqlalchemy_url(ds.database_url), **db._engine_kwargs(True))
    hand_ro_sessions = async_sessionmaker(hand_ro_engine, expire_on_commit=False, autoflush=False)

    async def raw() -> object:
        async with pool.acquire() as conn:
            return await conn.fetchrow(SQL, next(ids))

    async def seed() -> object:
        async with seed_sessions() as session:
            user = await session.get(User, next(ids))
            await session.commit()
            return user

    async def hand_rw() -> object:
        async with hand_sessions() as session:
            user = await session.get(User, next(ids))
            await session.commit()
            return user

    async def hand_ro() -> object:
        async with hand_ro_sessions() as session:
            return await session.get(User, next(ids))

    async def ours_ro() -> object:
        async with db.get_session(read_only=True) as session:
            return await session.get(User, next(ids))

    async def ours_rw() -> object:
        async with db.get_session() as session:
            return await session.get(User, next(ids))

    ops: dict[str, Op] = {
        "asyncpg": raw,
        "seed style": seed,
        "hand rw (same engine)": hand_rw,
        "hand ro (same engine)": hand_ro,
        "dualcore read-only": ours_ro,
        "dualcore read-write": ours_rw,
    }
    for op in ops.values():  # every variant must really find its row
        assert await op() is not None
    return ops, [pool, seed_engine, hand_engine, hand_ro_engine, db]


async def close(resources: list[Any]) -> None:
    """Close pools, engines and managers."""
    for res in resources:
        if hasattr(res, "dispose"):
            await res.dispose()
        else:
            await res.close()


async def measure(
    ds: Dataset, rounds: int, ops_per_block: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(median µs per read by variant, median ratio by compared variant)."""
    ops, resources = await build(ds)
    try:
        return await paired_rounds(ops, PAIRS, rounds, ops_per_block)
    finally:
        await close(resources)


async def round_trips(ds: Dataset, reads: int = 50) -> dict[str, str]:
    """Round trips per read of every variant, counted on the wire after a warm-up."""
    async with counting_proxy() as (port, counter):
        ops, resources = await build(ds.via(port))
        try:
            found = {}
            for name, op in ops.items():
                for _ in range(20):  # connections open, statements prepared
                    await op()
                counter.reset()
                for _ in range(reads):
                    await op()
                found[name] = counter.describe(reads)
            return found
        finally:
            await close(resources)


async def _main(rounds: int, ops: int) -> None:
    ds = Dataset()
    await ds.create()
    try:
        trips = await round_trips(ds)
        times, ratios = await measure(ds, rounds, ops)
    finally:
        await ds.drop()
    print(f"rounds={rounds} reads/block={ops}")
    print(f"{'variant':24} {'µs/read':>8} {'ratio':>7}  {'baseline':22} round trips per read")
    base_of = {p.variant: p.baseline for p in PAIRS}
    for name, t in times.items():
        ratio = f"{ratios[name]:.3f}x" if name in ratios else ""
        print(f"{name:24} {t:8.1f} {ratio:>7}  {base_of.get(name, ''):22} {trips[name]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.ops))


if __name__ == "__main__":
    main()
