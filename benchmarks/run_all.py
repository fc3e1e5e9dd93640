"""Every benchmark of the performance targets, in one run, summarised in one table of ratios.

    python benchmarks/run_all.py [--quick] [--only session,cache,http,memory,middleware]

Needs PostgreSQL and Redis (BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test;
BENCH_REDIS_URL, default redis://127.0.0.1:6379/0) and `wrk` on the PATH for the HTTP part.
Each part works on its own schema and key prefix and removes them afterwards. The machine may
be shared and noisy: every comparison runs its variants back to back in alternating order and
reports the median of the per-round ratios. `--quick` runs a short version (for development;
its figures are indicative only).

| part | what is compared | target |
|---|---|---|
| session | primary-key read, one task: read-only session vs asyncpg `fetchrow` | <= 1.5x |
| session | read-write session vs the same code by hand, same engine options | <= 1.05x |
| cache | `get_or_set` hit vs `redis.get` + decode (json dict; pydantic model) | <= 1.2x |
| http | example app vs hand-written FastAPI / Litestar + advanced-alchemy, req/s | >= 1.0x |
| memory | RSS after 100,000 requests vs after the first 10,000 | <= 1.05x |
| middleware | example app served with the observability stack vs without, req/s lost | <= 10% |
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import uuid
from dataclasses import dataclass

import bench_cache
import bench_example_middleware
import bench_http
import bench_memory
import bench_session
import redis.asyncio as aioredis
from _common import REDIS_URL, Dataset, Pair, machine, paired_rounds

PARTS = ["session", "cache", "http", "memory", "middleware"]


@dataclass
class Row:
    """One line of the summary: a measured figure against its limit."""

    target: str
    measured: float
    limit: float
    higher_is_better: bool = False
    unit: str = "x"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def cells(self) -> tuple[str, str, str, str, str]:
        if self.unit == "%":
            measured, limit = f"{self.measured:+.1f}%", f"<= {self.limit:.0f}%"
        else:
            measured = f"{self.measured:.3f}x"
            limit = f"{'>=' if self.higher_is_better else '<='} {self.limit:.2f}x"
        return self.target, measured, limit, "pass" if self.passed else "MISS", self.detail


@dataclass
class Plan:
    """How long each part runs."""

    session_rounds: int
    session_ops: int
    cache_rounds: int
    cache_ops: int
    http_rounds: int
    http_seconds: float
    http_connections: int
    memory_requests: int
    middleware_rounds: int
    middleware_seconds: float
    middleware_cpu_rounds: int
    middleware_cpu_requests: int


FULL = Plan(21, 300, 21, 300, 7, 5, 16, 100_000, 18, 2, 41, 200)
QUICK = Plan(5, 150, 5, 150, 2, 2, 16, 20_000, 6, 1, 9, 200)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def session_part(ds: Dataset, plan: Plan) -> list[Row]:
    trips = await bench_session.round_trips(ds)
    times, ratios = await bench_session.measure(ds, plan.session_rounds, plan.session_ops)
    for name, t in times.items():
        _say(f"  {name:24} {t:8.1f} µs/read  round trips/read {trips[name]}")
    return [
        Row(
            "1 read-only session vs asyncpg (PK read)",
            ratios["dualcore read-only"],
            1.5,
            detail=f"{times['dualcore read-only']:.0f} vs {times['asyncpg']:.0f} µs; "
            f"round trips {trips['dualcore read-only'].split()[0]} vs "
            f"{trips['asyncpg'].split()[0]}",
        ),
        Row(
            "1 read-write session vs same code by hand",
            ratios["dualcore read-write"],
            1.05,
            detail=f"{times['dualcore read-write']:.0f} vs {times['hand rw (same engine)']:.0f} µs",
        ),
        Row(
            "  (info) seed style vs asyncpg",
            ratios["seed style"],
            float("inf"),
            detail=f"round trips {trips['seed style'].split()[0]}",
        ),
        Row(
            "  (info) hand-written read-only vs asyncpg",
            ratios["hand ro (same engine)"],
            float("inf"),
            detail="same engine as dualcore's read-only one, no wrapper",
        ),
    ]


async def cache_part(plan: Plan) -> list[Row]:
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = f"bench_cache_{uuid.uuid4().hex[:8]}:"
    try:
        variants = await bench_cache.build(client, prefix)
        ops = {name: op for name, (op, _) in variants.items()}
        compared = {
            "get_or_set (json, plain)": "json dict",
            "get_or_set (json, model)": "pydantic model",
        }
        pairs = [Pair(name, variants[name][1] or "") for name in compared]
        times, ratios = await paired_rounds(ops, pairs, plan.cache_rounds, plan.cache_ops)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return [
        Row(
            f"2 get_or_set hit vs redis.get + decode ({kind})",
            ratios[name],
            1.2,
            detail=f"{times[name]:.0f} vs {times[variants[name][1] or '']:.0f} µs",
        )
        for name, kind in compared.items()
    ]


async def http_part(ds: Dataset, plan: Plan) -> list[Row]:
    result = await bench_http.measure(
        ds, plan.http_rounds, plan.http_seconds, plan.http_connections
    )
    rows = []
    for (ours, anchor, label), ratio in result.ratios.items():
        rows.append(
            Row(
                f"3 {label} {ours} vs {anchor}",
                ratio,
                1.0,
                higher_is_better=True,
                detail=f"{result.rps[(ours, label)]:.0f} vs "
                f"{result.rps[(anchor, label)]:.0f} req/s",
            )
        )
    return rows


async def memory_part(ds: Dataset, plan: Plan) -> list[Row]:
    rows = []
    n = plan.memory_requests
    for framework in ("fastapi", "litestar"):
        early, late = await bench_memory.measure(ds, framework, n)
        rows.append(
            Row(
                f"4 RSS after {n:,} / after {n // 10:,} requests ({framework})",
                late / early,
                1.05,
                detail=f"{early / 2**20:.1f} -> {late / 2**20:.1f} MiB",
            )
        )
    return rows


async def middleware_part(ds: Dataset, plan: Plan) -> list[Row]:
    served = await bench_example_middleware.measure_served(
        ds, plan.middleware_rounds, plan.middleware_seconds, plan.http_connections
    )
    cpu = await bench_example_middleware.measure_cpu(
        ds, plan.middleware_cpu_rounds, plan.middleware_cpu_requests
    )
    rows = [
        Row(
            f"5 observability stack, throughput ({framework}, {label})",
            row.cost * 100,
            10,
            unit="%",
            detail=f"{row.rps:.0f} req/s with it; control {row.control * 100:+.1f}%",
        )
        for (framework, label), row in served.items()
    ]
    rows += [
        Row(
            f"  (app CPU share in process, {framework}, {label})",
            cost * 100,
            float("inf"),
            unit="%",
            detail=f"{us:.0f} µs CPU/request with it",
        )
        for (framework, label), (us, cost) in cpu.items()
    ]
    return rows


async def run(parts: list[str], plan: Plan) -> list[Row]:
    ds = Dataset()
    await ds.create()
    rows: list[Row] = []
    try:
        for part in parts:
            _say(f"[{time.strftime('%H:%M:%S')}] {part} ...")
            if part == "session":
                rows += await session_part(ds, plan)
            elif part == "cache":
                rows += await cache_part(plan)
            elif part == "http":
                rows += await http_part(ds, plan)
            elif part == "memory":
                rows += await memory_part(ds, plan)
            elif part == "middleware":
                rows += await middleware_part(ds, plan)
    finally:
        await ds.drop()
    return rows


def render(rows: list[Row]) -> str:
    header = ("target", "measured", "limit", "result", "detail")
    cells = [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(5)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    for c, row in zip(cells, rows, strict=True):
        if row.limit == float("inf"):
            c = (c[0], c[1], "", "", c[4])
        lines.append(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short run, indicative figures")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    rows = asyncio.run(run(parts, plan))
    print()
    print(f"machine: {machine()}")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"run: {'quick' if args.quick else 'full'}, {time.monotonic() - started:.0f} s")
    print()
    print(render(rows))
    missed = [r for r in rows if r.limit != float("inf") and not r.passed]
    print()
    print(f"{len(missed)} target(s) missed" if missed else "all targets met")


if __name__ == "__main__":
    main()
