"""Contract run: schemathesis against both example services on a loopback port, with real
PostgreSQL and Redis, every check on and a bounded number of examples.

    python scripts/contract.py [--framework fastapi|litestar] [--max-examples N] [--seed N]

Each service runs as `dualcore demo` (uvicorn, migrations at start-up) in a database of its own,
created and dropped here on the test servers (127.0.0.1:5432 / :6379 when reachable, or
`DUALCORE_TEST_DATABASE_URL` / `DUALCORE_TEST_REDIS_URL`, else embedded servers). Exit 1 if
schemathesis finds anything: a server error, an undocumented status code, a response that
breaks its schema, a header or content type the document does not promise. Prints (and with
`--out` writes) the number of test cases run per framework.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATHS = {"fastapi": "/openapi.json", "litestar": "/schema/openapi.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with {server.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the service did not listen on port {port} within {timeout:.0f}s")


def _schemathesis() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    return found


def run_one(
    framework: str, database_url: str, redis_url: str, *, max_examples: int, seed: int, logs: Path
) -> dict[str, object]:
    """Serve one example app and run schemathesis against it; its figures and verdict."""
    from core.testing import create_database, drop_database

    database = asyncio.run(create_database(database_url, prefix="dccontract"))
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database.render_as_string(hide_password=False),
        "REDIS_URL": redis_url,
        "REDIS__KEY_PREFIX": f"dccontract:{uuid.uuid4().hex[:8]}:",
        "PYTHONPATH": str(ROOT),
    }
    log_path = logs / f"contract-{framework}-server.log"
    with ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb"))
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "core", "demo", "--framework", framework),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(port, server, timeout=120)
            started = time.monotonic()
            result = subprocess.run(
                [
                    _schemathesis(),
                    "run",
                    f"http://127.0.0.1:{port}{SCHEMA_PATHS[framework]}",
                    *("--checks", "all"),
                    *("--max-examples", str(max_examples)),
                    *("--seed", str(seed)),
                    *("--wait-for-schema", "30"),
                    "--no-color",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            elapsed = time.monotonic() - started
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            asyncio.run(drop_database(database, via=database_url))
    print(result.stdout)
    if result.stderr.strip():
        print(result.stderr, file=sys.stderr)
    counts = re.search(r"Test cases:\s*\n\s*(\d+) generated", result.stdout)
    return {
        "framework": framework,
        "ok": result.returncode == 0,
        "exit_code": result.returncode,
        "cases": int(counts.group(1)) if counts else None,
        "seconds": round(elapsed, 1),
        "max_examples": max_examples,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the contract against the chosen frameworks; 0 only if every run passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=sorted(SCHEMA_PATHS), action="append")
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)

    from core.testing.servers import testing_server_url

    frameworks = args.framework or sorted(SCHEMA_PATHS)
    logs = Path(tempfile.mkdtemp(prefix="dualcore-contract-"))
    print(f"service logs in {logs}")
    results = []
    with testing_server_url("postgres") as database_url, testing_server_url("redis") as redis_url:
        for framework in frameworks:
            results.append(
                run_one(
                    framework,
                    database_url,
                    redis_url,
                    max_examples=args.max_examples,
                    seed=args.seed,
                    logs=logs,
                )
            )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    for row in results:
        verdict = "passed" if row["ok"] else f"FAILED (exit {row['exit_code']})"
        print(f"{row['framework']}: {row['cases']} test cases in {row['seconds']}s, {verdict}")
    return 0 if all(row["ok"] and row["cases"] for row in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
