"""Memory of the example service over many requests: RSS after N requests against after N/10.

    python benchmarks/bench_memory.py [--requests 100000] [--framework fastapi|litestar|both]

Requests go in-process through the ASGI interface (no sockets, so it runs fast), with the real
database and Redis and the whole observability stack, access log included (written to
/dev/null). The key space grows for the whole run, so anything kept per user, per cache key or
per path shows up as growth between the two readings: the data set has a user for every
request, and each group of three requests uses ids never seen before:
`GET /users/{a}` (a new id), `GET /users/{b}/cached` (a new key: a miss and a real fill) and
`GET /users/{previous b}/cached` (a hit on the key filled just before). The first reading comes
after a tenth of the requests, when a tenth of the ids have been used. Each framework runs in
a fresh process of its own: memory another run freed but kept resident would otherwise absorb
a leak without any growth in RSS. Target: RSS at the end within 5% of RSS after the first tenth.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from _common import Dataset, quiet_access_log
from asgi_driver import app_factories, running

CONCURRENCY = 8
SCRIPT = str(Path(__file__).resolve())


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def paths(ds: Dataset, requests: int) -> list[str]:
    """`requests` paths; every group of three brings two ids never used before."""
    ids = iter(ds.ids)
    found: list[str] = []
    previous = None
    while len(found) < requests:
        fresh, keyed = next(ids), next(ids)
        found.append(f"/users/{fresh}")
        found.append(f"/users/{keyed}/cached")
        found.append(f"/users/{previous or keyed}/cached")
        previous = keyed
    return found[:requests]


def users_needed(requests: int) -> int:
    """Rows the data set needs so that no id comes round twice in `requests`."""
    return (requests + 2) // 3 * 2


@dataclass
class Reading:
    """RSS after the first tenth and after all requests."""

    requests: int
    first: int
    early: int
    late: int

    @property
    def ratio(self) -> float:
        return self.late / self.early

    @property
    def per_request(self) -> float:
        """Bytes of growth per request between the readings."""
        return (self.late - self.early) / (self.requests - self.first)


async def measure(ds: Dataset, framework: str, requests: int) -> Reading:
    """Both readings for the example app on `framework` (`ds` needs `users_needed` rows)."""
    if len(ds.ids) < users_needed(requests):
        raise ValueError(f"{requests} requests need {users_needed(requests)} users in the data set")
    # A key prefix of its own, so one framework's run never hits the other's entries.
    ds = replace(ds, prefix=f"{ds.prefix}{framework}:")
    factories = app_factories(ds)
    planned = paths(ds, requests)
    async with running(factories[f"{framework}-dualcore"], planned) as driver:
        quiet_access_log()
        first = requests // 10
        await driver.run(first, CONCURRENCY)
        gc.collect()
        early = rss_bytes()
        await driver.run(requests - first, CONCURRENCY)
        gc.collect()
        late = rss_bytes()
    return Reading(requests, first, early, late)


async def measure_here(framework: str, requests: int) -> Reading:
    """`measure` in this process, on a data set of its own."""
    ds = Dataset()
    await ds.create(rows=users_needed(requests))
    try:
        return await measure(ds, framework, requests)
    finally:
        await ds.drop()


async def measure_isolated(framework: str, requests: int) -> Reading:
    """`measure` in a fresh process (this script), so no other run's memory is reused."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--framework",
        framework,
        "--requests",
        str(requests),
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"memory run of {framework} failed (exit {process.returncode})")
    return Reading(**json.loads(out.decode().strip().splitlines()[-1]))


def describe(framework: str, r: Reading) -> str:
    return (
        f"{framework}: RSS after {r.first} requests {r.early / 2**20:.1f} MiB, "
        f"after {r.requests} {r.late / 2**20:.1f} MiB, growth {(r.ratio - 1) * 100:+.2f}% "
        f"({r.per_request:.0f} bytes/request)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--framework", choices=["fastapi", "litestar", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="print the reading as JSON")
    args = parser.parse_args()
    if args.framework == "both":
        for framework in ("fastapi", "litestar"):
            print(describe(framework, asyncio.run(measure_isolated(framework, args.requests))))
        return
    reading = asyncio.run(measure_here(args.framework, args.requests))
    print(json.dumps(asdict(reading)) if args.json else describe(args.framework, reading))


if __name__ == "__main__":
    main()
