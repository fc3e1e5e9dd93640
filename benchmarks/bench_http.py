"""HTTP throughput of the example service against the hand-written anchors, one framework each.

    python benchmarks/bench_http.py [--rounds N] [--seconds S] [--connections C]

Four uvicorn servers (one worker each, loopback) run side by side for the whole run: the
example app on FastAPI and on Litestar, the hand-written FastAPI app and Litestar with
advanced-alchemy (`baseline_apps.py`). `wrk` (one thread, keep-alive) drives one server at a
time, rotating over 100 users; each comparison runs its two servers back to back in
alternating order, and the table shows median requests/s and the median per-round ratio.
Target: every dualcore server at least 1.0x its anchor on `GET /users/{id}` and on the cached
lookup `GET /users/{id}/cached`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import Dataset

HERE = Path(__file__).resolve().parent
PAIRS = [("fastapi-dualcore", "fastapi-hand"), ("litestar-dualcore", "litestar-aa")]
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
    servers: dict[str, Server], ds: Dataset, workdir: str, timeout: float = 60
) -> None:
    """Poll every server until it answers both endpoints with 200, then fill the caches."""
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
            wrk(server.base, script, 1, connections)
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
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1))


@dataclass
class HttpResult:
    """Median requests/s by (server, endpoint) and median ratio by (ours, endpoint)."""

    rps: dict[tuple[str, str], float]
    ratios: dict[tuple[str, str, str], float]


async def measure(ds: Dataset, rounds: int, seconds: float, connections: int) -> HttpResult:
    """Start the servers, run the interleaved rounds, stop the servers."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found (Debian: apt-get install wrk)")
    names = [n for pair in PAIRS for n in pair]
    workdir = tempfile.mkdtemp(prefix="dualcore-bench-")
    servers = start_servers(ds, names, workdir)
    try:
        scripts = await prepare(servers, ds, workdir, connections)
        rps: dict[tuple[str, str], list[float]] = {}
        ratios: dict[tuple[str, str, str], list[float]] = {}
        for r in range(rounds):
            for label, script in scripts.items():
                for ours, anchor in PAIRS:
                    order = (ours, anchor) if r % 2 == 0 else (anchor, ours)
                    got = {
                        name: wrk(servers[name].base, script, seconds, connections)
                        for name in order
                    }
                    for name, value in got.items():
                        rps.setdefault((name, label), []).append(value)
                    ratios.setdefault((ours, anchor, label), []).append(got[ours] / got[anchor])
        return HttpResult(
            {k: statistics.median(v) for k, v in rps.items()},
            {k: statistics.median(v) for k, v in ratios.items()},
        )
    finally:
        stop_servers(servers)
        shutil.rmtree(workdir, ignore_errors=True)


async def _main(rounds: int, seconds: float, connections: int) -> None:
    ds = Dataset()
    await ds.create()
    try:
        result = await measure(ds, rounds, seconds, connections)
    finally:
        await ds.drop()
    print(f"rounds={rounds} seconds/run={seconds} connections={connections}")
    for (ours, anchor, label), ratio in result.ratios.items():
        print(
            f"{label:24} {ours:18} {result.rps[(ours, label)]:8.0f} req/s  "
            f"{anchor:14} {result.rps[(anchor, label)]:8.0f} req/s  ratio {ratio:.3f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(_main(args.rounds, args.seconds, args.connections))


if __name__ == "__main__":
    main()
