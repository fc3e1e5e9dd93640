"""Cost of the observability stack on the example service, with its real database work.

    python benchmarks/bench_example_middleware.py [--rounds 41] [--requests 200]

`bench_middleware.py` measures the stack on a hello-world endpoint (the worst case). This runs
the example app itself, in-process through ASGI, against the real PostgreSQL and Redis: once as
shipped (request id, access log rendered to /dev/null, metrics) and once with the adapters'
middleware hook returning the app unwrapped. Process CPU per request is compared (the app is
CPU bound on one worker, so that is its throughput): each round runs the two variants of one
framework back to back, in alternating order, and the cost is the median over rounds of
`1 - CPU without / CPU with`. The server's own per-request work (HTTP parsing, sockets) is not
in either figure, so this overstates the share a served app would see.
Target: the full stack costs at most 10% of the example's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from _common import Dataset, quiet_access_log
from asgi_driver import Driver, app_factories, running

from core.lifespan import Lifespan
from core.observability.asgi_types import ASGIApp

CONCURRENCY = 8
ENDPOINTS = {"GET /users/{id}": "/users/{id}", "GET /users/{id}/cached": "/users/{id}/cached"}


class BareLifespan(Lifespan):
    """The core without its HTTP middleware: the adapters wrap the app through `wrap_asgi`."""

    def wrap_asgi(self, app: ASGIApp) -> ASGIApp:
        return app


def _factories(ds: Dataset) -> dict[str, Callable[[], Any]]:
    app_factories(ds)  # sets the environment the settings are read from
    from examples.fastapi_app import create_app as fastapi_app
    from examples.litestar_app import create_app as litestar_app

    return {
        "fastapi full": lambda: fastapi_app(Lifespan()),
        "fastapi none": lambda: fastapi_app(BareLifespan()),
        "litestar full": lambda: litestar_app(Lifespan()),
        "litestar none": lambda: litestar_app(BareLifespan()),
    }


async def measure(
    ds: Dataset, rounds: int, requests: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """{(framework, endpoint): (CPU µs per request with the stack, throughput cost)}."""
    factories = _factories(ds)
    found: dict[tuple[str, str], tuple[float, float]] = {}
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
            costs: dict[str, list[float]] = {"fastapi": [], "litestar": []}
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


async def _main(rounds: int, requests: int) -> None:
    ds = Dataset()
    await ds.create()
    try:
        found = await measure(ds, rounds, requests)
    finally:
        await ds.drop()
    print(f"rounds={rounds} requests/round={requests} concurrency={CONCURRENCY}")
    for (framework, label), (cpu, cost) in found.items():
        print(f"{framework:9} {label:24} {cpu:7.1f} µs CPU/request, stack costs {cost * 100:+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.requests))


if __name__ == "__main__":
    main()
