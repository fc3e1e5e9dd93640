"""HTTP throughput of the example service against hand-written baselines, one framework at a time.

    python benchmarks/bench_http.py [--rounds N] [--seconds S] [--connections C ...]

For each framework three uvicorn servers (one worker each, loopback) run side by side: the
example app, the seed-style baseline and the equal-work baseline (`baseline_apps.py`):

- FastAPI: `fastapi-dualcore`, `fastapi-hand` (pre-ping, BEGIN/COMMIT, commit after the
  handler) and `fastapi-hand-ro` (autocommit read-only engine, no pre-ping: one round trip);
- Litestar: `litestar-dualcore`, `litestar-aa` (advanced-alchemy's plugin as documented:
  BEGIN/COMMIT) and `litestar-aa-ro` (the same plugin on an autocommit read-only engine).

`wrk` (one thread, keep-alive) drives one server at a time, rotating over 100 users, at each
concurrency of `--connections` (default 32 and 128: more clients than the default pool of 10 + 10
overflow connections, which every app keeps, as services run); each round runs the three servers
back to back, in an order that cycles through all six permutations, and the table shows median
requests/s and the median per-round ratios dualcore/baseline. Against
the seed style the ratio is what a user gains by switching; against the equal-work baseline it
is what dualcore's own layer costs. Before the timed rounds the servers run once more behind a
counting proxy (`pgwire.py`), which shows the database round trips per request of each.
A fourth server per framework is the dualcore app again with its cache's local tier on
(`CACHE__LOCAL_TIER=true`), compared with the seed style on both endpoints.
Targets: every dualcore server at least 1.10x its seed-style anchor on `GET /users/{id}` and on
the cached lookup `GET /users/{id}/cached`, at every concurrency; with the local tier, the
cached lookup at least 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import Dataset
from pgwire import counting_proxy

HERE = Path(__file__).resolve().parent
GROUPS = {
    "fastapi": ("fastapi-dualcore", "fastapi-hand", "fastapi-hand-ro"),
    "litestar": ("litestar-dualcore", "litestar-aa", "litestar-aa-ro"),
}
"""Per framework: (dualcore, seed-style baseline, equal-work baseline)."""
LOCAL = "@local"
"""Tag of a fourth server per framework: the dualcore app with `CACHE__LOCAL_TIER=true`."""
LOCAL_ENV = {"CACHE__LOCAL_TIER": "true"}
ENDPOINTS = {"GET /users/{id}": "/users/{id}", "GET /users/{id}/cached": "/users/{id}/cached"}
USERS = 100


@dataclass
class Server:
    """A server process and where it listens."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_servers(
    ds: Dataset, names: list[str], workdir: str, extra_env: dict[str, dict[str, str]] | None = None
) -> dict[str, Server]:
    """Start every server; the caller stops them with `stop_servers`.

    A name may carry a tag (`fastapi-dualcore@quiet`): the app is the part before `@`, and
    `extra_env[name]` is added to its environment.
    """
    servers: dict[str, Server] = {}
    for name in names:
        env = {**os.environ, **ds.env(), "PYTHONPATH": str(HERE.parent)}
        env.update((extra_env or {}).get(name, {}))
        port = _free_port()
        log = open(Path(workdir) / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        # cwd is a scratch directory, so no stray .env file changes the settings.
        process = subprocess.Popen(
            [sys.executable, str(HERE / "serve.py"), name.partition("@")[0], str(port)],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        servers[name] = Server(name, port, process)
    return servers


def stop_servers(servers: dict[str, Server]) -> None:
    """Stop the servers this run started (by their own process handles)."""
    for server in servers.values():
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers.values():
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


async def wait_ready(
    servers: dict[str, Server], ds: Dataset, workdir: str, timeout: float | None = None
) -> None:
    """Poll every server until it answers both endpoints with 200, then fill the caches.

    The servers start at once and compete for the CPU, so the default bound grows with their
    number: 60 s plus 15 s a server.
    """
    if timeout is None:
        timeout = 60 + 15 * len(servers)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        for server in servers.values():
            while True:
                if server.process.poll() is not None:
                    log = (Path(workdir) / f"{server.name}.log").read_text(errors="replace")
                    raise RuntimeError(f"{server.name} exited:\n{log[-3000:]}")
                try:
                    r = await client.get(f"{server.base}/users/{ds.ids[0]}")
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} did not become ready")
                await asyncio.sleep(0.2)
            for uid in ds.ids[:USERS]:  # every cached lookup of the run is a hit
                for path in ENDPOINTS.values():
                    r = await client.get(server.base + path.format(id=uid))
                    r.raise_for_status()


async def prepare(
    servers: dict[str, Server], ds: Dataset, workdir: str, connections: int
) -> dict[str, str]:
    """Wait for the servers, warm them up; returns the wrk script of each endpoint."""
    await wait_ready(servers, ds, workdir)
    scripts = {
        label: _lua([p.format(id=u) for u in ds.ids[:USERS]], workdir)
        for label, p in ENDPOINTS.items()
    }
    for server in servers.values():  # lazy imports, pools, statement caches
        for script in scripts.values():
            wrk_run(server.base, script, 1, connections)
    return scripts


def _lua(paths: list[str], workdir: str) -> str:
    script = Path(workdir) / f"paths-{abs(hash(tuple(paths)))}.lua"
    if not script.exists():
        listed = ",\n".join(f'  "{p}"' for p in paths)
        script.write_text(
            f"local paths = {{\n{listed}\n}}\nlocal i = 0\n"
            "request = function()\n  i = i % #paths + 1\n"
            '  return wrk.format("GET", paths[i])\nend\n'
        )
    return str(script)


def wrk(url: str, script: str, seconds: float, connections: int) -> float:
    """Requests per second of one wrk run; raises on any non-2xx answer or socket error."""
    rps, failed = wrk_run(url, script, seconds, connections)
    if failed:
        raise RuntimeError(f"wrk saw {failed} failed requests against {url}")
    return rps


def wrk_run(url: str, script: str, seconds: float, connections: int) -> tuple[float, int]:
    """(successful requests per second, failed requests) of one wrk run.

    A failed request is a non-2xx answer or a socket error. The hand-written baselines may fail
    some under heavy concurrency (redis-py's default pool refuses a 101st connection), so for
    them the failures are counted and only the successful requests enter the rate. wrk waits up
    to 10 s for an answer (its default, 2 s, is shorter than the pool's own wait, 5 s: a request
    queued for a connection under 128 connections is slow, not failed).
    """
    duration = f"-d{max(1, round(seconds))}s"
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", duration, "--timeout", "10s", "-s", script, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    count, elapsed = int(total.group(1)), float(total.group(2)) * unit
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    failed = int(non_2xx.group(1)) if non_2xx else 0
    socket_failures = sum(int(n) for n in sockets.groups()) if sockets else 0
    return (count - failed) / elapsed, failed + socket_failures


@dataclass
class HttpResult:
    """Median requests/s by (server, case), median ratio by (ours, baseline, case), database
    round trips per request by (server, endpoint), and the per-round ratios. A case is an
    endpoint at one concurrency (`cases` maps each to its endpoint)."""

    rps: dict[tuple[str, str], float]
    ratios: dict[tuple[str, str, str], float]
    trips: dict[tuple[str, str], str]
    samples: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    cases: dict[str, str] = field(default_factory=dict)
    failed: dict[tuple[str, str], int] = field(default_factory=dict)
    """Failed requests by (server, case), over all rounds (only baselines may fail)."""


def case_name(endpoint: str, connections: int) -> str:
    """The label of `endpoint` driven by `connections` concurrent connections."""
    return f"{endpoint} @{connections}"


async def count_round_trips(
    ds: Dataset, names: Sequence[str], workdir: str, requests: int = 50
) -> dict[tuple[str, str], str]:
    """Database round trips per request of each server, counted on the wire by a proxy.

    The servers run behind the proxy for this only (it would slow the timed runs down); each
    is warmed up (pools open, statements prepared, caches filled), then sent `requests`
    sequential requests per endpoint.
    """
    found: dict[tuple[str, str], str] = {}
    async with counting_proxy() as (port, counter):
        via = ds.via(port)
        servers = start_servers(via, list(names), workdir, _extra_env(names))
        try:
            await wait_ready(servers, via, workdir)
            async with httpx.AsyncClient(timeout=10) as client:
                for server in servers.values():
                    for label, template in ENDPOINTS.items():
                        paths = [template.format(id=u) for u in ds.ids[:USERS]]
                        for path in paths[:20]:
                            (await client.get(server.base + path)).raise_for_status()
                        counter.reset()
                        for i in range(requests):
                            r = await client.get(server.base + paths[i % len(paths)])
                            r.raise_for_status()
                        found[(server.name, label)] = counter.describe(requests)
        finally:
            stop_servers(servers)
    return found


ORDERS = list(itertools.permutations(range(4)))


def _extra_env(names: Sequence[str]) -> dict[str, dict[str, str]]:
    return {name: LOCAL_ENV for name in names if name.endswith(LOCAL)}


def servers_of(framework: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(the servers of `framework`, the (ours, baseline) pairs compared)."""
    ours, seed, equal = GROUPS[framework]
    local = ours + LOCAL
    return [ours, seed, equal, local], [(ours, seed), (ours, equal), (local, seed)]


async def measure(
    ds: Dataset, rounds: int, seconds: float, connections: Sequence[int]
) -> HttpResult:
    """For each framework: count round trips, start the servers, run the rounds (every endpoint
    at every concurrency), stop them."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found (Debian: apt-get install wrk)")
    rps: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str, str], list[float]] = {}
    trips: dict[tuple[str, str], str] = {}
    cases: dict[str, str] = {}
    failed: dict[tuple[str, str], int] = {}
    for framework in GROUPS:
        names, pairs = servers_of(framework)
        ours = names[0]
        workdir = tempfile.mkdtemp(prefix="dualcore-bench-")
        try:
            trips.update(await count_round_trips(ds, names, workdir))
            servers = start_servers(ds, names, workdir, _extra_env(names))
            try:
                scripts = await prepare(servers, ds, workdir, max(connections))
                for r in range(rounds):
                    for (label, script), conns in itertools.product(scripts.items(), connections):
                        case = case_name(label, conns)
                        cases[case] = label
                        order = [names[i] for i in ORDERS[r % len(ORDERS)]]
                        runs = {
                            name: wrk_run(servers[name].base, script, seconds, conns)
                            for name in order
                        }
                        for mine in (ours, ours + LOCAL):
                            if runs[mine][1]:
                                raise RuntimeError(
                                    f"{mine} failed {runs[mine][1]} requests ({case})"
                                )
                        got = {name: run[0] for name, run in runs.items()}
                        for name, (value, failures) in runs.items():
                            rps.setdefault((name, case), []).append(value)
                            failed[(name, case)] = failed.get((name, case), 0) + failures
                        for mine, base in pairs:
                            ratio = got[mine] / got[base]
                            ratios.setdefault((mine, base, case), []).append(ratio)
            finally:
                stop_servers(servers)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return HttpResult(
        {k: statistics.median(v) for k, v in rps.items()},
        {k: statistics.median(v) for k, v in ratios.items()},
        trips,
        ratios,
        cases,
        failed,
    )


async def _main(rounds: int, seconds: float, connections: list[int]) -> None:
    ds = Dataset()
    await ds.create()
    try:
        result = await measure(ds, rounds, seconds, connections)
    finally:
        await ds.drop()
    print(f"rounds={rounds} seconds/run={seconds} connections={connections}")
    for (name, case), value in result.rps.items():
        trips = result.trips[(name, result.cases[case])]
        failures = result.failed.get((name, case), 0)
        note = f"  {failures} requests failed" if failures else ""
        print(f"{case:28} {name:18} {value:8.0f} req/s  db round trips {trips}{note}")
    for (ours, base, case), ratio in result.ratios.items():
        print(f"{case:28} {ours:18} vs {base:18} {ratio:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.seconds, args.connections))


if __name__ == "__main__":
    main()
