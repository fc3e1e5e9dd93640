"""Memory of the example service over many requests: RSS after N requests against after N/10.

    python benchmarks/bench_memory.py [--requests 100000] [--framework fastapi|litestar|both]

Requests go in-process through the ASGI interface (no sockets, so it runs fast), with the real
database and Redis and the whole observability stack, access log included (written to
/dev/null). They rotate over every user of the data set, half by `GET /users/{id}` and half by
the cached lookup, so the cache fills during the run. Target: RSS at the end within 5% of RSS
after the first tenth.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os

from _common import Dataset, quiet_access_log
from asgi_driver import app_factories, running

CONCURRENCY = 8


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def measure(ds: Dataset, framework: str, requests: int) -> tuple[int, int]:
    """(RSS after the first tenth, RSS after all `requests`) for the example app on `framework`."""
    factories = app_factories(ds)
    paths = [p for uid in ds.ids for p in (f"/users/{uid}", f"/users/{uid}/cached")]
    async with running(factories[f"{framework}-dualcore"], paths) as driver:
        quiet_access_log()
        first = requests // 10
        await driver.run(first, CONCURRENCY)
        gc.collect()
        early = rss_bytes()
        await driver.run(requests - first, CONCURRENCY)
        gc.collect()
        late = rss_bytes()
    return early, late


async def _main(requests: int, frameworks: list[str]) -> None:
    ds = Dataset()
    await ds.create()
    try:
        for framework in frameworks:
            early, late = await measure(ds, framework, requests)
            print(
                f"{framework}: RSS after {requests // 10} requests {early / 2**20:.1f} MiB, "
                f"after {requests} {late / 2**20:.1f} MiB, growth {(late / early - 1) * 100:+.2f}%"
            )
    finally:
        await ds.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--framework", choices=["fastapi", "litestar", "both"], default="both")
    args = parser.parse_args()
    frameworks = ["fastapi", "litestar"] if args.framework == "both" else [args.framework]
    asyncio.run(_main(args.requests, frameworks))


if __name__ == "__main__":
    main()
