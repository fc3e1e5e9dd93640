"""Cost of the observability middleware stack on a small app, per framework.

Calls each app's ASGI entry point in-process with synthetic scope/receive/send (no server, no
sockets), so the figure is the middleware's own CPU cost against the framework's on a
hello-world endpoint, the worst case: any real handler work shrinks the ratio. Variants run in
interleaved rounds (order alternating) and the medians of the per-round means are compared.

    python benchmarks/bench_middleware.py [--framework fastapi|litestar|both]
                                          [--rounds 15] [--requests 2000] [--items 0]

The access log is on (JSON, INFO) and written by a StreamHandler to /dev/null, so rendering and
handler costs are included; metrics use a private registry.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from core.config import ObservabilitySettings
from core.observability import (
    AccessLogMiddleware,
    Metrics,
    MetricsMiddleware,
    ObservabilityMiddleware,
    RequestIdMiddleware,
)

ACCESS_LOGGER = "bench.access"

Wrap = Callable[[Any], Any]


def payload(user_id: int, items: int) -> dict[str, Any]:
    """The response body: the user plus `items` small records (0: just the id)."""
    if not items:
        return {"id": user_id}
    rows = [{"id": i, "name": f"user-{i}", "email": f"u{i}@example.com"} for i in range(items)]
    return {"id": user_id, "items": rows}


def fastapi_app(wrap: Wrap | None, items: int) -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, Any]:
        return payload(user_id, items)

    if wrap is not None:
        # Outermost, as the adapter wires it: around Starlette's whole middleware stack.
        build = app.build_middleware_stack
        app.build_middleware_stack = lambda: wrap(build())  # type: ignore[method-assign]
    return app


def litestar_app(wrap: Wrap | None, items: int) -> Any:
    from litestar import Litestar, get

    @get("/users/{user_id:int}", sync_to_thread=False)
    def user(user_id: int) -> dict[str, Any]:
        return payload(user_id, items)

    app = Litestar([user], logging_config=None)
    if wrap is not None:
        # Outermost, as the adapter wires it: around the router and its exception handling.
        app.asgi_handler = wrap(app.asgi_handler)
    return app


BUILDERS = {"fastapi": fastapi_app, "litestar": litestar_app}


def variants() -> dict[str, Wrap | None]:
    settings = ObservabilitySettings()
    quiet = ObservabilitySettings(access_log=False)
    logger = logging.getLogger(ACCESS_LOGGER)
    return {
        "none": None,
        "full stack": lambda app: ObservabilityMiddleware(
            app, settings=settings, metrics=Metrics(), access_logger=logger
        ),
        "stack, no access": lambda app: ObservabilityMiddleware(
            app, settings=quiet, metrics=Metrics(), access_logger=logger
        ),
        "request id only": lambda app: RequestIdMiddleware(app),
        "access log only": lambda app: AccessLogMiddleware(app, logger=logger),
        "metrics only": lambda app: MetricsMiddleware(app, metrics=Metrics()),
    }


SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/users/42",
    "raw_path": b"/users/42",
    "query_string": b"",
    "root_path": "",
    "client": ("127.0.0.1", 50000),
    "server": ("bench", 80),
}
HEADERS = [(b"host", b"bench"), (b"accept", b"application/json"), (b"user-agent", b"bench/1")]


async def run_batch(app: Any, n: int) -> float:
    """CPU seconds per request over `n` sequential requests.

    Process CPU time rather than wall time: the loop never waits on I/O, and CPU time is far
    less disturbed by other processes sharing the machine.
    """
    request = {"type": "http.request", "body": b"", "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.process_time()
    for _ in range(n):
        await app({**SCOPE, "headers": list(HEADERS), "state": {}}, receive, send)
    elapsed = time.process_time() - start
    if statuses[-1] != 200 or len(statuses) != n:
        raise RuntimeError(f"unexpected responses: {statuses[-3:]}")
    return elapsed / n


async def bench(framework: str, rounds: int, requests: int, items: int) -> dict[str, float]:
    apps = {name: BUILDERS[framework](wrap, items) for name, wrap in variants().items()}
    for app in apps.values():  # warm up: routing caches, label children, lazy stacks
        await run_batch(app, 200)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    names = list(apps)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(await run_batch(apps[name], requests))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["fastapi", "litestar", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--items", type=int, default=0, help="records in each response (0: hello world)"
    )
    args = parser.parse_args()

    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    logger.addHandler(logging.StreamHandler(devnull))

    frameworks = ["fastapi", "litestar"] if args.framework == "both" else [args.framework]
    print(
        f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.requests} requests, "
        f"{args.items} items per response"
    )
    worst = 0.0
    for framework in frameworks:
        medians = asyncio.run(bench(framework, args.rounds, args.requests, args.items))
        base = medians["none"]
        print(f"\n{framework}: median CPU us/request, throughput relative to none")
        for name, value in medians.items():
            ratio = base / value
            print(f"  {name:<16} {value * 1e6:8.1f} us   x{ratio:.3f}  ({(ratio - 1) * 100:+.1f}%)")
        worst = max(worst, 1 - base / medians["full stack"])
    verdict = "within" if worst <= 0.10 else "OVER"
    print(f"\nfull stack throughput cost: worst {worst * 100:.1f}% ({verdict} the 10% target)")


if __name__ == "__main__":
    main()
