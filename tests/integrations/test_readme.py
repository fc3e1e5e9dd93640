"""Every code block in README.md runs: Python blocks are executed (apps are exercised through
their framework's test client), shell blocks are checked against what CI runs, and the
configuration table matches the Settings model."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support.codeblocks import block_env as readme_env  # noqa: F401 (a fixture)
from tests.support.codeblocks import (
    blocks,
    check_settings_block,
    framework_of,
    fresh_database,  # noqa: F401 (a fixture)
    is_env_block,
    python_params,
    run_migration_block,
    run_plugin_suite,
    run_python_block,
)
from tests.support.frameworks import FRAMEWORKS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = blocks(README)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code.strip() for lang, code in BLOCKS if lang == "bash"]
ENV_BLOCKS = [code for lang, code in BLOCKS if is_env_block(lang, code)]


def test_settings_table_is_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_settings import render
    finally:
        sys.path.pop(0)
    assert render(README) == README, "run: python scripts/settings_reference.py"


def test_there_are_blocks_for_each_framework() -> None:
    frameworks = {framework_of(code) for code in PYTHON}
    assert {"fastapi", "litestar", None} <= frameworks


@pytest.mark.usefixtures("readme_env")
@pytest.mark.parametrize("code", python_params(PYTHON, FRAMEWORKS))
def test_python_block_runs(code: str) -> None:
    run_python_block(code, "README.md")


# The snippet's app is the FastAPI example: the sessions with FastAPI run it.
if "fastapi" in FRAMEWORKS:

    def test_pytest_plugin_snippets_run_as_a_test_suite(
        pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        database_url: str,
        redis_url: str,
    ) -> None:
        result = run_plugin_suite(pytester, monkeypatch, PYTHON, database_url, redis_url)
        result.assert_outcomes(passed=2)


def test_migration_commands_run(tmp_path: Path, fresh_database: str) -> None:  # noqa: F811
    block = next(c for c in SHELL if c.startswith("dualcore db init"))
    run_migration_block(block, tmp_path, fresh_database)


@pytest.mark.parametrize("block", ENV_BLOCKS)
def test_configuration_snippets_are_valid_settings(
    block: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_settings_block(block, monkeypatch)


def test_shell_commands_are_the_ones_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(c for c in SHELL if "nox" in c and "bench" not in c)
    assert test_command == "pip install nox uv && nox"
    assert re.search(r"^nox$", ci, re.M), ".ci/run must run the README's test command"
    # The README's command must pass with nothing but Python: sessions that need a system
    # binary are opt-in, and CI runs them by name.
    noxfile = (ROOT / "noxfile.py").read_text()
    defaults = re.search(r"nox\.options\.sessions = \[(.*?)\]", noxfile, re.S)
    assert defaults is not None
    assert "scaling" not in defaults.group(1)
    assert re.search(r"^nox -s scaling$", ci, re.M)
    assert "nox -s scaling" in README and "pgbouncer" in README
    assert "prometheus" not in defaults.group(1)
    assert re.search(r"^nox -s prometheus$", ci, re.M)
    assert "nox -s prometheus" in README and "apt-get install prometheus" in README
    assert any(c.startswith("pip install") and "dualcore demo" in c for c in SHELL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_demo(framework: str, env: dict[str, str]) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "demo", "--framework", framework, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "demo did not become ready"
            time.sleep(0.3)
        email = f"{uuid.uuid4().hex[:8]}@example.com"
        created = httpx.post(f"{base}/users", json={"email": email, "name": "Demo"}, timeout=5)
        assert created.status_code == 201, created.text
        uid = created.json()["id"]
        assert httpx.get(f"{base}/users/{uid}/cached", timeout=5).json()["email"] == email
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out
    # The demo prints dualcore's access log: the lookup by its route template, with its status.
    access = [
        json.loads(line.partition(" ")[2])
        for line in out.splitlines()
        if line.startswith("dualcore.access ")
    ]
    assert any(
        a["method"] == "POST" and a["route"] == "/users" and a["status"] == 201 for a in access
    ), out
    assert any(a["route"] == "/users/{user_id}/cached" and a["status"] == 200 for a in access), out


@pytest.mark.anyio
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_demo_command_on_configured_servers(
    framework: str, database_url: str, redis_url: str, pg_schema: str
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATABASE__SEARCH_PATH": pg_schema,
        "REDIS_URL": redis_url,
        "REDIS__KEY_PREFIX": f"demo-{uuid.uuid4().hex[:8]}:",
    }
    await anyio.to_thread.run_sync(_run_demo, framework, env)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_demo_command_on_a_bare_machine(framework: str, tmp_path: Path) -> None:
    """No URLs set: the demo starts embedded servers under ./.dualcore and works in one step."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("DATABASE", "REDIS", "APP__"))
    }
    _run_demo(framework, env)
