"""Processes for the operations tests: the example service under uvicorn, a private Redis, a
Prometheus scraping the service, and a traffic driver. All on loopback ports of their own."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "ops" / "grafana" / "dualcore.json"
JOB = "dualcore"
INSTALL = "apt-get install prometheus"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; a missing one fails the test with the install
    line (these tests exist to run the real tools, so skipping would hide that nothing ran)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH; install it: {INSTALL} (Debian/Ubuntu)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _clean_env() -> dict[str, str]:
    # The service reads its settings from the environment: none of the caller's may leak in.
    groups = (
        "APP_",
        "DATABASE_",
        "REDIS_",
        "CACHE_",
        "OBSERVABILITY_",
        "RESILIENCE_",
        "PROMETHEUS_",
    )
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(groups)}


@dataclass
class Service:
    """The example users service of one framework, served by uvicorn."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def run_service(
    framework: str,
    *,
    database_url: str,
    redis_url: str,
    workdir: Path,
    workers: int = 1,
) -> Iterator[Service]:
    """Serve `examples.<framework>_app:create_app` on a free loopback port until the block ends.

    With `workers > 1` it runs in prometheus-client's multiprocess mode: `PROMETHEUS_MULTIPROC_DIR`
    is set for every worker, as a deployment with several workers must do.
    """
    port = free_port()
    env = _clean_env()
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS__KEY_PREFIX=f"dcops:{uuid.uuid4().hex[:12]}:",
        OBSERVABILITY__ACCESS_LOG="false",
    )
    if workers > 1:
        multiproc = workdir / "multiproc"
        multiproc.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    log = workdir / "service.log"
    with log.open("wb") as out:
        # cwd is a scratch directory so no `.env` is read; --app-dir makes `examples` importable.
        command = [sys.executable, "-m", "uvicorn", "--factory"]
        command += [f"examples.{framework}_app:create_app", "--app-dir", str(REPO)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        command += ["--no-access-log", "--log-level", "warning"]
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    service = Service(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait(
            f"{framework} service",
            lambda: httpx.get(f"{service.url}/health/ready", timeout=2).status_code == 200,
            proc,
            60,
        )
        yield service
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{service.output()}") from None
    finally:
        _stop(proc)


@contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of this test only (never the machine's shared one), stopped at the end."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("`redis-server` is not on PATH; install it: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait("private redis", lambda: _answers(port), proc, 15)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        _stop(proc)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Prometheus:
    """A Prometheus server and the subset of its HTTP API the tests use."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def query(self, promql: str) -> dict[str, Any]:
        """`/api/v1/query` at the current time: the `data` of a success, else AssertionError
        with Prometheus' error (a parse error names the position)."""
        r = self.client.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')}\n  in: {promql}")
        return dict(body["data"])

    def series(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector `promql` evaluates to (a scalar or string result fails)."""
        data = self.query(promql)
        assert data["resultType"] == "vector", f"{data['resultType']} result from {promql}"
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        r = self.client.get(f"{self.url}/api/v1/alerts")
        r.raise_for_status()
        return list(r.json()["data"]["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        r = self.client.get(f"{self.url}/api/v1/rules")
        r.raise_for_status()
        return [rule for group in r.json()["data"]["groups"] for rule in group["rules"]]

    def label_values(self, label: str, match: str) -> list[str]:
        quoted = urllib.parse.quote(label)
        r = self.client.get(f"{self.url}/api/v1/label/{quoted}/values", params={"match[]": match})
        r.raise_for_status()
        return list(r.json()["data"])

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def run_prometheus(target: str, rules: Path, workdir: Path) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, its data under `workdir`, scraping and evaluating
    every second so a test sees rates, recorded series and alerts within seconds."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary("prometheus"), f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            ],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait("prometheus", lambda: httpx.get(f"{prom.url}/-/ready").status_code == 200, proc, 30)
        yield prom
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{prom.output()}") from None
    finally:
        prom.client.close()
        _stop(proc)


class Traffic:
    """Drives the users service from a thread until stopped: writes, cached and uncached reads,
    a page, a 404 and readiness probes, so every metric family gets samples."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            ids: list[str] = []
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    if len(ids) < 5 or n % 50 == 0:
                        email = f"u{uuid.uuid4().hex[:12]}@example.com"
                        r = client.post("/users", json={"email": email, "name": "Ops"})
                        self._count(r)
                        if r.status_code == 201:
                            ids.append(r.json()["id"])
                        continue
                    user = ids[n % len(ids)]
                    for r in (
                        client.get(f"/users/{user}/cached"),
                        client.get(f"/users/{user}"),
                        client.get("/users", params={"limit": 5}),
                        client.get(f"/users/{uuid.uuid4()}"),
                        client.get("/health/ready"),
                    ):
                        self._count(r)
                    if n % 10 == 0:
                        self._count(client.patch(f"/users/{user}", json={"name": f"Ops {n}"}))
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.02)

    def _count(self, r: httpx.Response) -> None:
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1


def has_value(series: list[dict[str, Any]]) -> bool:
    """Whether any sample is a number (not NaN, as a ratio of two zero rates is)."""
    return any(not math.isnan(float(s["value"][1])) for s in series)


def eventually(check: Callable[[], str | None], timeout: float, interval: float = 0.5) -> None:
    """Call `check` until it returns None (success) or `timeout` passes; then fail with the
    last reason it gave."""
    deadline = time.monotonic() + timeout
    reason: str | None = "never checked"
    while time.monotonic() < deadline:
        reason = check()
        if reason is None:
            return
        time.sleep(interval)
    pytest.fail(f"after {timeout:.0f}s: {reason}")


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule of the rules file, in order."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def load_panels(path: Path = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel of the dashboard with queries, rows' nested panels included."""
    doc = json.loads(path.read_text())
    found: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        found.extend(p for p in [panel, *panel.get("panels", [])] if p.get("targets"))
    return found
