"""Cost of the observability stack on the example service, with its real database work.

    python benchmarks/bench_example_middleware.py [--rounds 18] [--seconds 2] [--connections 16]
                                                  [--cpu-rounds 41] [--cpu-requests 200]

Both figures compare the example app as shipped (request id, access log written to /dev/null,
metrics) with the same app whose adapters' middleware hook returns it unwrapped, on the real
PostgreSQL and Redis:

- **throughput** (the target): uvicorn servers, one worker each, driven by `wrk` on loopback.
  Each round runs a server with the stack and one without, of one framework, back to back in
  alternating order; the cost is `1 - median over rounds of (req/s with / req/s without)`.
  Each variant runs as three server processes, used in turn, since two processes of the same
  code can differ by a few percent on their own. Each round also measures a second process
  without the stack against the first: that control's "cost" shows the noise floor.
- **app CPU** (an upper bound): the apps called in-process through ASGI, without a server.
  The cost is the median over paired rounds of `1 - CPU without / CPU with`. The server's own
  work per request (HTTP parsing, sockets) is in neither variant, so the stack's share of it
  is larger than a served app sees.

Target: the full stack costs at most 10% of the example's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from _common import Dataset, quiet_access_log
from asgi_driver import Driver, app_factories, running
from baseline_apps import BareLifespan
from bench_http import ENDPOINTS, prepare, start_servers, stop_servers, wrk

from core.runtime import Core

CONCURRENCY = 8
POOL_SIZE = 3
"""Database pool of each served process (per pool: primary and read-only)."""
FRAMEWORKS = ("fastapi", "litestar")

Found = dict[tuple[str, str], tuple[float, float]]
"""{(framework, endpoint): (figure with the stack, cost as a fraction)}."""


def _factories(ds: Dataset) -> dict[str, Callable[[], Any]]:
    app_factories(ds)  # sets the environment the settings are read from
    from examples.fastapi_app import create_app as fastapi_app
    from examples.litestar_app import create_app as litestar_app

    return {
        "fastapi full": lambda: fastapi_app(Core()),
        "fastapi none": lambda: fastapi_app(BareLifespan()),
        "litestar full": lambda: litestar_app(Core()),
        "litestar none": lambda: litestar_app(BareLifespan()),
    }


async def measure_cpu(ds: Dataset, rounds: int, requests: int) -> Found:
    """In-process: (CPU µs per request with the stack, the stack's share of it)."""
    factories = _factories(ds)
    found: Found = {}
    for label, template in ENDPOINTS.items():
        paths = [template.format(id=uid) for uid in ds.ids[:200]]
        async with AsyncExitStack() as stack:
            drivers: dict[str, Driver] = {}
            for name, factory in factories.items():
                drivers[name] = await stack.enter_async_context(running(factory, paths))
            quiet_access_log()
            for driver in drivers.values():  # warm up; every cached lookup afterwards is a hit
                await driver.run(len(paths) * 2, CONCURRENCY)
            cpu: dict[str, list[float]] = {name: [] for name in drivers}
            costs: dict[str, list[float]] = {framework: [] for framework in FRAMEWORKS}
            for r in range(rounds):
                for framework in costs:
                    pair = [f"{framework} full", f"{framework} none"]
                    for name in pair if r % 2 == 0 else reversed(pair):
                        cpu[name].append(await drivers[name].run(requests, CONCURRENCY))
                    full, none = cpu[pair[0]][-1], cpu[pair[1]][-1]
                    costs[framework].append(1 - none / full)
            for framework, values in costs.items():
                full = statistics.median(cpu[f"{framework} full"])
                found[(framework, label)] = (full * 1e6, statistics.median(values))
    return found


@dataclass
class Served:
    """One endpoint served with and without the stack."""

    rps: float
    """Median requests/s with the stack."""
    cost: float
    """Throughput lost to the stack (a fraction)."""
    control: float
    """The same figure for two processes that both run without the stack: the noise floor.
    Its distance from zero is the `noise` the summary's verdict allows above the limit."""
    losses: list[float] = field(default_factory=list)
    """The loss of each round (a fraction), for the charts of its spread."""


async def measure_served(
    ds: Dataset, rounds: int, seconds: float, connections: int, processes: int = 3
) -> dict[tuple[str, str], Served]:
    """Over HTTP, for each (framework, endpoint).

    Two servers of the same code can differ by several percent for reasons of their own
    (hash seed, memory layout), so each variant runs as `processes` server processes and
    round r pairs the r-th processes of both variants (modulo `processes`). Each round also
    runs the next process without the stack, as a control that should show no cost.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found (Debian: apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="dualcore-bench-")
    names = [
        f"{framework}-dualcore@{variant}{i}"
        for framework in FRAMEWORKS
        for variant in ("full", "none")
        for i in range(processes)
    ]
    # Small pools: the servers idle in turn but keep their connections, and all of them
    # together stay under PostgreSQL's default max_connections (100).
    pool = {"DATABASE__POOL_SIZE": str(POOL_SIZE), "DATABASE__MAX_OVERFLOW": "0"}
    env = {
        name: {
            **pool,
            "BENCH_ACCESS_LOG": "devnull",
            "BENCH_OBSERVABILITY": name.partition("@")[2].rstrip("0123456789"),
        }
        for name in names
    }
    servers = start_servers(ds, names, workdir, env)
    try:
        scripts = await prepare(servers, ds, workdir, connections)
        rps: dict[tuple[str, str], list[float]] = {}
        ratios: dict[tuple[str, str], list[float]] = {}
        controls: dict[tuple[str, str], list[float]] = {}
        for r in range(rounds):
            i, block = r % processes, r // processes
            for label, script in scripts.items():
                for framework in FRAMEWORKS:
                    full = servers[f"{framework}-dualcore@full{i}"]
                    none = servers[f"{framework}-dualcore@none{i}"]
                    # The control: another process of the same app without the stack.
                    other = servers[f"{framework}-dualcore@none{(i + 1) % processes}"]
                    order = [full, none, other]
                    order = order[block % 3 :] + order[: block % 3]
                    if block // 3 % 2:
                        order.reverse()
                    got = {s.name: wrk(s.base, script, seconds, connections) for s in order}
                    key = (framework, label)
                    rps.setdefault(key, []).append(got[full.name])
                    ratios.setdefault(key, []).append(got[full.name] / got[none.name])
                    controls.setdefault(key, []).append(got[other.name] / got[none.name])
        return {
            key: Served(
                statistics.median(rps[key]),
                1 - statistics.median(values),
                1 - statistics.median(controls[key]),
                [1 - v for v in values],
            )
            for key, values in ratios.items()
        }
    finally:
        stop_servers(servers)
        shutil.rmtree(workdir, ignore_errors=True)


async def _main(args: argparse.Namespace) -> None:
    ds = Dataset()
    await ds.create()
    try:
        served = await measure_served(ds, args.rounds, args.seconds, args.connections)
        cpu = await measure_cpu(ds, args.cpu_rounds, args.cpu_requests)
    finally:
        await ds.drop()
    print(
        f"throughput: rounds={args.rounds} seconds/run={args.seconds} "
        f"connections={args.connections}"
    )
    for (framework, label), row in served.items():
        print(
            f"  {framework:9} {label:24} {row.rps:7.0f} req/s, stack costs {row.cost * 100:+.1f}%"
            f" (control without the stack: {row.control * 100:+.1f}%)"
        )
    print(
        f"app CPU (upper bound): rounds={args.cpu_rounds} requests/round={args.cpu_requests} "
        f"concurrency={CONCURRENCY}"
    )
    for (framework, label), (value, cost) in cpu.items():
        print(f"  {framework:9} {label:24} {value:7.1f} µs/request, stack costs {cost * 100:+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=18)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cpu-rounds", type=int, default=41)
    parser.add_argument("--cpu-requests", type=int, default=200)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
