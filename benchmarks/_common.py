"""Shared pieces of the benchmarks: the data set, the settings, and the paired-rounds runner.

Every benchmark works on its own PostgreSQL schema (the example's `users` table, found through
`search_path`) and its own Redis key prefix, both removed at the end, so runs never touch the
data of anything else on the servers.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from core.config import Settings

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROWS = 5000

Op = Callable[[], Awaitable[object]]

_DDL = """
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email varchar(320) NOT NULL,
    name varchar(200) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_users_email UNIQUE (email) DEFERRABLE INITIALLY DEFERRED
)
"""


def asyncpg_dsn(url: str = DATABASE_URL) -> str:
    """`url` as asyncpg takes it (no `+asyncpg` driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str = DATABASE_URL) -> str:
    """`url` with the asyncpg driver, as SQLAlchemy takes it."""
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@dataclass
class Dataset:
    """A private schema holding the example's `users` table with `rows` rows."""

    schema: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:10]}")
    prefix: str = ""
    database_url: str = DATABASE_URL
    ids: list[uuid.UUID] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = f"{self.schema}:"

    async def create(self, rows: int = ROWS) -> None:
        """Create the schema and fill the table."""
        conn = await asyncpg.connect(asyncpg_dsn())
        try:
            await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            await conn.execute(f'SET search_path TO "{self.schema}"')
            await conn.execute(_DDL)
            self.ids = [uuid.uuid4() for _ in range(rows)]
            await conn.copy_records_to_table(
                "users",
                records=[
                    (uid, f"user{i}@bench.example", f"User {i}") for i, uid in enumerate(self.ids)
                ],
                columns=["id", "email", "name"],
                schema_name=self.schema,
            )
            await conn.execute(f'ANALYZE "{self.schema}".users')
        finally:
            await conn.close()

    async def drop(self) -> None:
        """Drop the schema and every Redis key under the prefix."""
        import redis.asyncio as aioredis

        conn = await asyncpg.connect(asyncpg_dsn())
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{self.prefix}*", count=1000)]
            for i in range(0, len(keys), 500):
                await client.delete(*keys[i : i + 500])
        finally:
            await client.aclose()

    def env(self) -> dict[str, str]:
        """Environment for a server process: our settings plus the data set's coordinates."""
        return {
            "DATABASE_URL": sqlalchemy_url(self.database_url),
            "REDIS_URL": REDIS_URL,
            "DATABASE__SEARCH_PATH": self.schema,
            "REDIS__KEY_PREFIX": self.prefix,
            "APP__NAME": "bench",
            "APP__ENVIRONMENT": "production",
            "BENCH_SCHEMA": self.schema,
            "BENCH_PREFIX": self.prefix,
        }

    def via(self, port: int) -> Dataset:
        """The same data set reached through a proxy listening on loopback `port`."""
        url = make_url(self.database_url).set(host="127.0.0.1", port=port)
        return replace(self, database_url=url.render_as_string(hide_password=False))

    def settings(self, **overrides: Any) -> Settings:
        """Core settings pointing at this data set (defaults otherwise)."""
        data: dict[str, Any] = {
            "app": {"name": "bench", "environment": "production"},
            "database": {"url": sqlalchemy_url(self.database_url), "search_path": self.schema},
            "redis": {"url": REDIS_URL, "key_prefix": self.prefix},
        }
        for group, values in overrides.items():
            data[group] = {**data.get(group, {}), **values}
        return Settings(_env_file=None, **data)


async def timed_block(op: Op, ops: int) -> float:
    """Mean wall time of one call, in microseconds, over `ops` sequential calls."""
    start = time.perf_counter()
    for _ in range(ops):
        await op()
    return (time.perf_counter() - start) / ops * 1e6


@dataclass(frozen=True)
class Pair:
    """One comparison: `variant` against `baseline`, both names of operations."""

    variant: str
    baseline: str


async def paired_rounds(
    ops: dict[str, Op],
    pairs: Sequence[Pair],
    rounds: int,
    per_block: int,
    warmup: int = 200,
    samples: dict[Pair, list[float]] | None = None,
) -> tuple[dict[str, float], dict[Pair, float]]:
    """Run each pair's blocks side by side, alternating order, for `rounds` rounds.

    Returns (median µs per call of every operation, median per-round ratio variant/baseline of
    every pair). Adjacent blocks see the same machine load, so their ratio is far steadier than
    either time on a shared machine. A variant may appear in several pairs (against different
    baselines); each pair runs its own blocks. `samples`, when given, receives every pair's
    per-round ratios (for the charts of their spread).
    """
    for op in ops.values():
        for _ in range(warmup):
            await op()
    times: dict[str, list[float]] = {name: [] for name in ops}
    ratios: dict[Pair, list[float]] = {p: [] for p in pairs}
    for r in range(rounds):
        shift = r % len(pairs)
        for pair in [*pairs[shift:], *pairs[:shift]]:
            if r % 2:
                t_var = await timed_block(ops[pair.variant], per_block)
                t_base = await timed_block(ops[pair.baseline], per_block)
            else:
                t_base = await timed_block(ops[pair.baseline], per_block)
                t_var = await timed_block(ops[pair.variant], per_block)
            times[pair.variant].append(t_var)
            times[pair.baseline].append(t_base)
            ratios[pair].append(t_var / t_base)
    if samples is not None:
        samples.update(ratios)
    return (
        {name: statistics.median(v) for name, v in times.items() if v},
        {name: statistics.median(v) for name, v in ratios.items()},
    )


def machine() -> str:
    """One line describing the machine and interpreter."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    return (
        f"{platform.node()} · {cpu} · {os.cpu_count()} cores · {platform.system()} "
        f"{platform.release()} · Python {platform.python_version()} · {load}"
    )


def quiet_access_log() -> None:
    """Access log on at INFO, written to /dev/null: its cost is real, its output is not wanted."""
    logger = logging.getLogger("dualcore.access")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115
