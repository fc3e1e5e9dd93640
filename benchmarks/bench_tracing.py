"""Cost of tracing per request: `OBSERVABILITY__TRACING` off and on, and off against another
checkout of the code (the one before tracing reached the database and Redis, say).

Each request goes through a `Core`'s ASGI layers in-process (no server, no sockets) to a plain
ASGI handler. Two handlers: `io` reads a cached value (one Redis GET, a cache hit) and runs one
SQL statement (`SELECT $1`) on real servers, as a typical read endpoint does; `bare` does no I/O,
so only the layers themselves are measured (the worst case for any overhead). Variants run in
interleaved rounds (order alternating) and the medians of the per-round means are compared.

    python benchmarks/bench_tracing.py [--rounds 15] [--requests 500]
    python benchmarks/bench_tracing.py --baseline /path/to/other/checkout [--runs 8]

The access log is on (JSON, INFO) into /dev/null. With tracing on, spans go through the SDK's
`SimpleSpanProcessor` to an exporter that drops them: the cost of making, ending and handing over
every span, without any I/O of an exporter.
`--baseline` runs the tracing-off variant in fresh processes alternating between this checkout
and the given one (its `core` package imported instead of this one), and prints the ratio.
Servers: BENCH_DATABASE_URL / BENCH_REDIS_URL (default the local PostgreSQL `test` database and
Redis 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

Call = Callable[[], Awaitable[None]]


def quiet_access_log() -> None:
    """The access log on at INFO into /dev/null: rendered and handled, never printed."""
    logger = logging.getLogger("dualcore.access")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(open(os.devnull, "w")))  # noqa: SIM115


def make_core(tracing: bool, prefix: str) -> Any:
    """A core on the benchmark servers; with tracing, spans go to an SDK provider that drops
    them."""
    from core import Core, Settings

    settings = Settings(
        app={"name": "bench-tracing"},
        database={"url": DATABASE_URL, "pool_size": 2, "max_overflow": 0},
        redis={"url": REDIS_URL, "key_prefix": prefix},
        observability={"tracing": tracing},
    )
    if not tracing:
        return Core(settings)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return Core(settings, tracer_provider=provider)


def request_call(core: Any, workload: str) -> Call:
    """One request through `core.wrap_asgi(handler)`."""
    from sqlalchemy import text

    statement = text("SELECT CAST(:v AS int)")

    async def value() -> int:
        return 1

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        if workload == "io":
            await core.redis.cache.get_or_set("bench:tracing", value, ttl=300)
            async with core.db.get_session(read_only=True) as session:
                await session.execute(statement, {"v": 1})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = core.wrap_asgi(handler)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/users/7",
        "raw_path": b"/users/7",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 5000),
        "server": ("bench", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def call() -> None:
        await app(dict(scope), receive, send)

    return call


async def timed(call: Call, requests: int) -> float:
    """Mean seconds per request over `requests` sequential requests."""
    start = time.perf_counter()
    for _ in range(requests):
        await call()
    return (time.perf_counter() - start) / requests


async def compare(rounds: int, requests: int, variants: list[str]) -> dict[str, list[float]]:
    """Per-round means of each `<workload>/<tracing>` variant, in interleaved rounds."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    cores = {tracing: make_core(tracing == "on", prefix) for tracing in {"off", "on"}}
    calls: dict[str, Call] = {}
    for name in variants:
        workload, tracing = name.split("/")
        calls[name] = request_call(cores[tracing], workload)
    means: dict[str, list[float]] = {name: [] for name in variants}
    for core in cores.values():
        await core.__aenter__()
    try:
        for call in calls.values():  # warm-up: pools, prepared statements, the cache entry
            await timed(call, max(requests // 5, 20))
        for i in range(rounds):
            order = variants if i % 2 == 0 else variants[::-1]
            for name in order:
                means[name].append(await timed(calls[name], requests))
    finally:
        for core in cores.values():
            await core.redis.client.delete(core.redis.cache.redis_key("bench:tracing"))
            await core.__aexit__(None, None, None)
    return means


def median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def report(means: dict[str, list[float]]) -> None:
    for workload in ("bare", "io"):
        off, on = median_us(means[f"{workload}/off"]), median_us(means[f"{workload}/on"])
        print(
            f"{workload:4}  tracing off {off:8.1f} µs  on {on:8.1f} µs  on/off {on / off:5.2f}"
            f"  (+{on - off:.1f} µs)"
        )


def against(baseline: Path, runs: int, rounds: int, requests: int) -> None:
    """Tracing off here and in `baseline`, in fresh processes run alternately."""
    trees = {"this": HERE.parent, "baseline": baseline.resolve()}
    results: dict[str, dict[str, list[float]]] = {tree: {"bare": [], "io": []} for tree in trees}
    for i in range(runs):
        order = list(trees) if i % 2 == 0 else list(trees)[::-1]
        for tree in order:
            env = {**os.environ, "PYTHONPATH": str(trees[tree])}
            command = [sys.executable, __file__, "--worker", f"--rounds={rounds}"]
            out = subprocess.run(
                [*command, f"--requests={requests}"],
                env=env,
                cwd=trees[tree],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            measured = json.loads(out)
            # The point of the comparison: each process ran its own checkout's `core`.
            assert Path(measured.pop("core")).is_relative_to(trees[tree]), measured
            for workload, values in measured.items():
                results[tree][workload] += values
    print(f"tracing off, this checkout vs {trees['baseline']}")
    for workload in ("bare", "io"):
        this, base = median_us(results["this"][workload]), median_us(results["baseline"][workload])
        print(
            f"{workload:4}  this {this:8.1f} µs  baseline {base:8.1f} µs  this/baseline "
            f"{this / base:5.3f}"
        )


async def worker(rounds: int, requests: int) -> None:
    """The tracing-off variants only, with whichever `core` is importable: prints JSON."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    core = make_core(False, prefix)
    calls = {w: request_call(core, w) for w in ("bare", "io")}
    means: dict[str, list[float]] = {w: [] for w in calls}
    async with core:
        for call in calls.values():
            await timed(call, max(requests // 5, 20))
        for i in range(rounds):
            for w in list(calls) if i % 2 == 0 else list(calls)[::-1]:
                means[w].append(await timed(calls[w], requests))
        await core.redis.client.delete(core.redis.cache.redis_key("bench:tracing"))
    import core as package

    print(json.dumps({**means, "core": package.__file__}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare tracing off")
    parser.add_argument("--runs", type=int, default=8, help="processes per checkout")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_access_log()
    if args.worker:
        asyncio.run(worker(args.rounds, args.requests))
    elif args.baseline is not None:
        against(args.baseline, args.runs, args.rounds, args.requests)
    else:
        variants = ["bare/off", "bare/on", "io/off", "io/on"]
        report(asyncio.run(compare(args.rounds, args.requests, variants)))


if __name__ == "__main__":
    main()
