"""dualcore's observability stack against the stack users assemble from other packages.

The job is the same on both sides: a request id (read or made, echoed in the response), one
access log line per request written to a file, and Prometheus request metrics.

- FastAPI peers: `asgi-correlation-id` + `prometheus-fastapi-instrumentator` (its defaults, as
  `Instrumentator().instrument(app)` sets them up) + uvicorn's access log.
- Litestar peers: `asgi-correlation-id` (Litestar has no request-id middleware of its own) +
  Litestar's own `PrometheusConfig` middleware and `LoggingMiddlewareConfig` middleware.
- dualcore: `ObservabilityMiddleware` with its default settings (JSON access log), outermost, as
  `install(app)` and `CorePlugin` wire it; uvicorn's access log off, as dualcore's docs say.

uvicorn writes its access line from its HTTP protocol, not from a middleware; with no server in
the loop the peer side runs the same call (`logging.getLogger("uvicorn.access").info(...)`
with uvicorn's own `AccessFormatter` and arguments) when the response starts.

Each app is called in-process (no sockets): process CPU per request over a batch, the variants
in alternating order each round. A stack's cost is its app's CPU per request minus the bare
app's in the same round; the figure is the median over rounds of dualcore's cost / the peers'.

    python benchmarks/bench_peers.py [--framework fastapi|litestar|both]
                                     [--rounds 21] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_middleware import HEADERS, SCOPE, fastapi_app, litestar_app, payload, run_batch
from prometheus_client import CollectorRegistry

from core.config import ObservabilitySettings
from core.observability import Metrics, ObservabilityMiddleware

TARGET = 0.7
VARIANTS = ("bare", "dualcore", "peers")


def _file_logger(name: str, path: Path, formatter: logging.Formatter | None = None) -> None:
    """Route `name`'s records to a file only, at INFO."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(path)
    if formatter is not None:
        handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def dualcore_wrap(logdir: Path) -> Callable[[Any], Any]:
    """dualcore's stack, default settings, its access log going to a file."""
    _file_logger("bench.dualcore.access", logdir / "dualcore.log")
    logger = logging.getLogger("bench.dualcore.access")
    settings = ObservabilitySettings()
    return lambda app: ObservabilityMiddleware(
        app, settings=settings, metrics=Metrics(), access_logger=logger
    )


class UvicornAccessLog:
    """What uvicorn's HTTP protocol does for its access log when a response starts."""

    def __init__(self, app: Any) -> None:
        from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

        self.app = app
        self.logger = logging.getLogger("uvicorn.access")
        self._client = get_client_addr
        self._path = get_path_with_query_string

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_logged(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    self._client(scope),
                    scope["method"],
                    self._path(scope),
                    scope["http_version"],
                    message["status"],
                )
            await send(message)

        await self.app(scope, receive, send_logged)


def fastapi_peers(logdir: Path) -> Any:
    """FastAPI with asgi-correlation-id, prometheus-fastapi-instrumentator, uvicorn's log."""
    from asgi_correlation_id import CorrelationIdMiddleware
    from fastapi import FastAPI
    from prometheus_fastapi_instrumentator import Instrumentator
    from uvicorn.logging import AccessFormatter

    _file_logger(
        "uvicorn.access",
        logdir / "uvicorn.log",
        AccessFormatter(
            '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            use_colors=False,
        ),
    )
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, Any]:
        return payload(user_id, 0)

    Instrumentator(registry=CollectorRegistry()).instrument(app)
    app.add_middleware(CorrelationIdMiddleware)
    return UvicornAccessLog(app)


def litestar_peers(logdir: Path) -> Any:
    """Litestar with asgi-correlation-id and its own Prometheus and logging middleware."""
    from asgi_correlation_id import CorrelationIdMiddleware
    from litestar import Litestar, get
    from litestar.logging.config import LoggingConfig
    from litestar.middleware.logging import LoggingMiddlewareConfig
    from litestar.plugins.prometheus import PrometheusConfig

    @get("/users/{user_id:int}", sync_to_thread=False)
    def user(user_id: int) -> dict[str, Any]:
        return payload(user_id, 0)

    logging_config = LoggingConfig(
        handlers={
            "file": {
                "class": "logging.FileHandler",
                "filename": str(logdir / "litestar.log"),
                "formatter": "standard",
            }
        },
        loggers={"litestar": {"level": "INFO", "handlers": ["file"], "propagate": False}},
        configure_root_logger=False,
    )
    return Litestar(
        [user],
        middleware=[
            CorrelationIdMiddleware,
            PrometheusConfig().middleware,
            LoggingMiddlewareConfig().middleware,
        ],
        logging_config=logging_config,
    )


def apps(framework: str, logdir: Path) -> dict[str, Any]:
    """The bare app, dualcore's stack and the peers' stack on one framework."""
    bare = fastapi_app if framework == "fastapi" else litestar_app
    peers = fastapi_peers if framework == "fastapi" else litestar_peers
    return {
        "bare": bare(None, 0),
        "dualcore": bare(dualcore_wrap(logdir), 0),
        "peers": peers(logdir),
    }


@dataclass
class Result:
    """Median CPU µs per request of each variant, and the per-round cost ratios."""

    us: dict[str, float]
    ratios: list[float]

    @property
    def ratio(self) -> float:
        """Median of dualcore's stack cost / the peers' stack cost."""
        return statistics.median(self.ratios)

    def cost(self, name: str) -> float:
        """The stack's own CPU µs per request (its app minus the bare app, medians)."""
        return self.us[name] - self.us["bare"]


async def _response_headers(app: Any) -> dict[bytes, bytes]:
    """The headers of one response of `app` to the benchmark's request."""
    headers: dict[bytes, bytes] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers.update(message.get("headers", []))

    await app({**SCOPE, "headers": list(HEADERS), "state": {}}, receive, send)
    return headers


def _log_sizes(logdir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in logdir.iterdir()}


async def _check_same_job(variants: dict[str, Any], logdir: Path) -> None:
    """Both stacks answer with a request id, write their access log and count the request."""
    for name in ("dualcore", "peers"):
        headers = await _response_headers(variants[name])
        if b"x-request-id" not in headers:
            raise RuntimeError(f"{name}: no X-Request-ID in {sorted(headers)}")
    logs = _log_sizes(logdir)
    if len([size for size in logs.values() if size]) < 2:
        raise RuntimeError(f"expected both stacks' access logs to be written: {logs}")


async def measure(framework: str, rounds: int, requests: int, logdir: Path) -> Result:
    """Run the three variants of `framework` in alternating order for `rounds` rounds."""
    variants = apps(framework, logdir)
    await _check_same_job(variants, logdir)
    for app in variants.values():  # warm up: routing caches, label children, lazy stacks
        await run_batch(app, 300)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ratios: list[float] = []
    for r in range(rounds):
        this: dict[str, float] = {}
        for name in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
            this[name] = await run_batch(variants[name], requests)
            samples[name].append(this[name])
        ratios.append((this["dualcore"] - this["bare"]) / (this["peers"] - this["bare"]))
    return Result({n: statistics.median(v) * 1e6 for n, v in samples.items()}, ratios)


def measure_all(frameworks: list[str], rounds: int, requests: int) -> dict[str, Result]:
    """`measure` per framework, logs in a temporary directory removed afterwards."""
    results = {}
    for framework in frameworks:
        with tempfile.TemporaryDirectory(prefix="dualcore-peers-") as tmp:
            results[framework] = asyncio.run(measure(framework, rounds, requests, Path(tmp)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["fastapi", "litestar", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    frameworks = ["fastapi", "litestar"] if args.framework == "both" else [args.framework]
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.requests} requests")
    missed = False
    for framework, result in measure_all(frameworks, args.rounds, args.requests).items():
        print(f"\n{framework}: median CPU µs/request")
        for name in VARIANTS:
            extra = "" if name == "bare" else f"   stack {result.cost(name):6.1f} µs"
            print(f"  {name:<9} {result.us[name]:7.1f}{extra}")
        verdict = "pass" if result.ratio <= TARGET else "MISS"
        missed |= verdict == "MISS"
        spread = f"{min(result.ratios):.3f}-{max(result.ratios):.3f}"
        print(
            f"  dualcore / peers stack cost: {result.ratio:.3f}x (rounds {spread}), "
            f"target <= {TARGET}x: {verdict}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
