"""Primary-key read in one task: dualcore sessions against raw asyncpg and hand-written SQLAlchemy.

    python benchmarks/bench_session.py [--rounds N] [--ops N]

Variants (each reads one `users` row by primary key, rotating over the data set's ids):
- `asyncpg`: `pool.acquire()` + `fetchrow`, no library at all;
- `seed style`: `async_sessionmaker` per request on an engine with `pool_pre_ping=True`,
  `session.get()` then `commit()`, as the seed's hand-written services do (pre-ping, BEGIN,
  SELECT, COMMIT);
- `hand ro (equal work)`: the same one-round-trip read written by hand: an engine with
  `isolation_level="AUTOCOMMIT"`, `default_transaction_read_only` and no pre-ping, a session
  per read and no commit. It does exactly the work of dualcore's read-only session;
- `hand rw (same engine)`: the seed's code on an engine built with dualcore's read-write
  options (what `get_session()` is compared with);
- `dualcore read-only` / `dualcore read-write`: `db.get_session(read_only=...)` + `session.get()`;
- `dualcore read connection`: `db.read_connection()` + a Core `select()` of the same columns
  (the read fast path: no ORM session).

Two ratios tell different stories: dualcore read-only against the seed style is what a user
gains by switching; against the equal-work read it is what dualcore's own layer costs.
Targets: read-only within 1.5x asyncpg; read-write within 1.05x the hand-written code; the read
connection within 1.6x asyncpg.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

import asyncpg
from _common import Dataset, Op, Pair, asyncpg_dsn, paired_rounds, sqlalchemy_url
from pgwire import counting_proxy
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from core.database import DatabaseManager
from examples.users.models import User

SQL = "SELECT id, email, name, created_at, updated_at FROM users WHERE id = $1"

RO_TARGET = Pair("dualcore read-only", "asyncpg")
RW_TARGET = Pair("dualcore read-write", "hand rw (same engine)")
CONN_TARGET = Pair("dualcore read connection", "asyncpg")
SWITCH = Pair("dualcore read-only", "seed style")
"""What a user of the seed style gains by switching (dualcore read-only, seed's work)."""
OWN_COST = Pair("dualcore read-only", "hand ro (equal work)")
"""What dualcore's own layer costs over the same work written by hand."""
PAIRS = [
    RO_TARGET,
    RW_TARGET,
    CONN_TARGET,
    Pair("dualcore read connection", "dualcore read-only"),
    SWITCH,
    OWN_COST,
    Pair("seed style", "asyncpg"),
    Pair("hand ro (equal work)", "asyncpg"),
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
    # The equal-work read, as a user would write it: no transaction, no pre-ping, no commit.
    hand_ro_engine = create_async_engine(
        sqlalchemy_url(ds.database_url),
        isolation_level="AUTOCOMMIT",
        connect_args={
            "server_settings": {"search_path": ds.schema, "default_transaction_read_only": "on"}
        },
    )
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

    by_id = select(User.__table__).where(User.__table__.c.id == bindparam("id"))

    async def ours_conn() -> object:
        async with db.read_connection() as conn:
            return (await conn.execute(by_id, {"id": next(ids)})).first()

    async def ours_rw() -> object:
        async with db.get_session() as session:
            return await session.get(User, next(ids))

    ops: dict[str, Op] = {
        "asyncpg": raw,
        "seed style": seed,
        "hand rw (same engine)": hand_rw,
        "hand ro (equal work)": hand_ro,
        "dualcore read-only": ours_ro,
        "dualcore read-write": ours_rw,
        "dualcore read connection": ours_conn,
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
    ds: Dataset, rounds: int, ops_per_block: int, samples: dict[Pair, list[float]] | None = None
) -> tuple[dict[str, float], dict[Pair, float]]:
    """(median µs per read by variant, median ratio by pair); per-round ratios into
    `samples` when given."""
    ops, resources = await build(ds)
    try:
        return await paired_rounds(ops, PAIRS, rounds, ops_per_block, samples=samples)
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
    print(f"{'variant':24} {'µs/read':>8}  round trips per read")
    for name, t in times.items():
        print(f"{name:24} {t:8.1f}  {trips[name]}")
    print()
    for pair, ratio in ratios.items():
        print(f"{pair.variant:24} vs {pair.baseline:24} {ratio:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.ops))


if __name__ == "__main__":
    main()
