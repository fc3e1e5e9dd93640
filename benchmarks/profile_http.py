"""Where a served request's time goes: py-spy samples each server of `bench_http.py` under wrk load.

    python benchmarks/profile_http.py [--servers NAME ...] [--endpoint E] [--connections C]
                                      [--seconds S]

Each server (uvicorn, one worker; a name ending in `@local` runs with the cache's local tier)
runs alone under `wrk -t1 -c<C>` on the endpoint (default `GET /users/{id}`) while
`py-spy record` samples its process (needs `py-spy` and `wrk`; sampling another process needs
ptrace rights, e.g. root). Every sample is given to the innermost frame that belongs to a known
part (the observability middleware, the unit-of-work layer, dependency resolution, the session
lifecycle, the breaker, SQL execution, the event loop...), so the shares add up to 100%. The
collapsed stacks are kept next to the summary (`--out`, default a temporary directory) for a
flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import tempfile
from pathlib import Path

import bench_http
from _common import Dataset

PARTS: list[tuple[str, tuple[str, ...]]] = [
    # Innermost match wins, so the order only matters between patterns of one frame.
    ("breaker", ("core/resilience/breaker.py",)),
    ("shielded cleanup", ("core/_aio.py",)),
    ("unit of work layer", ("core/unit_of_work.py",)),
    ("observability middleware", ("core/observability/",)),
    ("session lifecycle (dualcore)", ("core/database/",)),
    ("cache (dualcore)", ("core/cache/",)),
    ("dualcore, other", ("/core/", "integrations/")),
    ("app handlers", ("examples/", "baseline_apps.py")),
    ("Redis client", ("redis/",)),
    ("asyncpg", ("asyncpg/",)),
    ("SQLAlchemy ORM session", ("sqlalchemy/orm/session.py", "sqlalchemy/ext/asyncio/session.py")),
    ("SQLAlchemy pool", ("sqlalchemy/pool/",)),
    ("SQLAlchemy, other", ("sqlalchemy/",)),
    ("dependency resolution", ("fastapi/dependencies/", "litestar/_kwargs/", "litestar/di")),
    ("pydantic / serialisation", ("pydantic", "msgspec", "fastapi/encoders.py")),
    ("framework routing, responses", ("fastapi/", "starlette/", "litestar/", "advanced_alchemy/")),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("event loop", ("uvloop", "asyncio/")),
]


def part_of(frame: str, parts: list[tuple[str, tuple[str, ...]]] = PARTS) -> str | None:
    """The part a collapsed-stack frame (`function (path:line)`) belongs to, if any."""
    for name, patterns in parts:
        if any(p in frame for p in patterns):
            return name
    return None


def summarise(
    collapsed: Path, parts: list[tuple[str, tuple[str, ...]]] = PARTS
) -> dict[str, float]:
    """Share of samples by part (`parts`, innermost known frame first)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        part = next((p for f in reversed(frames) if (p := part_of(f, parts)) is not None), "other")
        counts[part] += int(count)
    total = sum(counts.values()) or 1
    return {name: n / total for name, n in counts.most_common()}


def sample(
    server: bench_http.Server, script: str, connections: int, seconds: float, collapsed: Path
) -> tuple[float, int]:
    """Drive `server` with wrk while py-spy records it; (successful req/s, failed requests)."""
    spy = subprocess.Popen(
        [
            "py-spy", "record", "--pid", str(server.process.pid), "--format", "raw",
            "--rate", "250", "--nonblocking", "--duration", str(int(seconds)),
            "--output", str(collapsed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return bench_http.wrk_run(server.base, script, seconds, connections)
    finally:
        spy.wait(timeout=seconds + 60)


async def profile(
    names: list[str], endpoint: str, connections: int, seconds: float, out: Path
) -> None:
    ds = Dataset()
    await ds.create()
    workdir = tempfile.mkdtemp(prefix="dualcore-profile-")
    try:
        extra_env = {n: bench_http.LOCAL_ENV for n in names if n.endswith(bench_http.LOCAL)}
        servers = bench_http.start_servers(ds, names, workdir, extra_env)
        try:
            scripts = await bench_http.prepare(servers, ds, workdir, connections)
            script = scripts[endpoint]
            for name, server in servers.items():
                collapsed = out / f"{name}-c{connections}.txt"
                rps, failed = sample(server, script, connections, seconds, collapsed)
                print(f"\n{name}: {rps:.0f} req/s at {connections} connections, {failed} failed")
                for part, share in summarise(collapsed).items():
                    print(f"  {part:34} {share:6.1%}")
                print(f"  (collapsed stacks: {collapsed})")
        finally:
            bench_http.stop_servers(servers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        await ds.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--servers", nargs="+", default=["fastapi-dualcore", "fastapi-hand"])
    parser.add_argument("--endpoint", choices=list(bench_http.ENDPOINTS), default="GET /users/{id}")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    for tool in ("py-spy", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (pip install py-spy; apt-get install wrk)")
    out = args.out or Path(tempfile.mkdtemp(prefix="dualcore-flame-"))
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(profile(args.servers, args.endpoint, args.connections, args.seconds, out))


if __name__ == "__main__":
    main()
