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
import types
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from core.config import get_settings
from tests.conftest import FRAMEWORKS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code.strip() for lang, code in BLOCKS if lang == "bash"]
ENV_BLOCKS = [
    code for lang, code in BLOCKS if lang == "text" and re.search(r"^[A-Z_]+=", code, re.M)
]


def _framework_of(code: str) -> str | None:
    for name in ("fastapi", "litestar"):
        if f"from {name}" in code or f"integrations.{name}" in code:
            return name
    return None


def _is_test_file(code: str) -> bool:
    return code.startswith(("# conftest.py", "# test_"))


def _params() -> list[Any]:
    params = []
    for i, code in enumerate(PYTHON):
        if _is_test_file(code):
            continue
        fw = _framework_of(code)
        if fw is None or fw in FRAMEWORKS:
            params.append(pytest.param(code, id=f"block{i}-{fw or 'core'}"))
    return params


@pytest.fixture
def readme_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str, key_prefix: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS__KEY_PREFIX", key_prefix)
    monkeypatch.setenv("APP__NAME", f"readme-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_settings_table_is_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_settings import render
    finally:
        sys.path.pop(0)
    assert render(README) == README, "run: python scripts/readme_settings.py"


def test_there_are_blocks_for_each_framework() -> None:
    frameworks = {_framework_of(code) for code in PYTHON}
    assert {"fastapi", "litestar", None} <= frameworks


@pytest.mark.usefixtures("readme_env")
@pytest.mark.parametrize("code", _params())
def test_python_block_runs(code: str) -> None:
    # A real module, since frameworks resolve annotations through sys.modules.
    module = types.ModuleType(f"readme_block_{uuid.uuid4().hex[:8]}")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "README.md", "exec"), module.__dict__)
        _exercise(code, module.__dict__.get("app"))
    finally:
        del sys.modules[module.__name__]


def _exercise(code: str, app: Any) -> None:
    if app is None:
        return
    fw = _framework_of(code)
    if fw == "fastapi":
        from fastapi.testclient import TestClient
    else:
        from litestar.testing import TestClient  # type: ignore[assignment]
    with TestClient(app) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert "x-request-id" in ready.headers
        assert client.get("/health").json()["status"] == "ok"
        if "/time" in code:
            assert client.get("/time").json()["now"]
        if "/notes" in code:
            first = client.post("/notes", json={"text": "hello"})
            assert first.status_code in (200, 201), first.text
            second = client.post("/notes", json={"text": "again"})
            assert second.json()["notes_added"] == first.json()["notes_added"] + 1


# The snippet's app is the FastAPI example: the sessions with FastAPI run it.
if "fastapi" in FRAMEWORKS:

    def test_pytest_plugin_snippets_run_as_a_test_suite(
        pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        database_url: str,
        redis_url: str,
    ) -> None:
        files = {code.split("\n", 1)[0][2:].strip(): code for code in PYTHON if _is_test_file(code)}
        assert set(files) == {"conftest.py", "test_users.py"}
        monkeypatch.setenv("DUALCORE_TEST_DATABASE_URL", database_url)
        monkeypatch.setenv("DUALCORE_TEST_REDIS_URL", redis_url)
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        pytester.makeconftest(files["conftest.py"])
        pytester.makepyfile(test_users=files["test_users.py"])
        result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=180)
        result.assert_outcomes(passed=2)


def test_migration_commands_run(tmp_path: Path, database_url: str, fresh_database: str) -> None:
    block = next(c for c in SHELL if c.startswith("dualcore db init"))
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text("from examples.users.models import Base, User  # noqa: F401\n")
    env = {
        **os.environ,
        "DATABASE_URL": fresh_database,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
    }
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        argv = command.split()
        assert argv[0] == "dualcore"
        if argv[:3] == ["dualcore", "db", "revision"]:
            argv = [*argv[:-1], "add users"]  # the shell would have unquoted it
            argv.remove('"add')
        done = subprocess.run(
            [sys.executable, "-m", "core", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if argv[2:3] == ["downgrade"]:
            # Back up again so `check` compares against an up-to-date database.
            up = subprocess.run(
                [sys.executable, "-m", "core", "db", "upgrade"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert up.returncode == 0, up.stderr


@pytest.fixture
def fresh_database(database_url: str) -> Any:
    """A database of its own for commands that create tables in the default schema."""
    import asyncio

    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    name = f"dcreadme_{uuid.uuid4().hex[:10]}"
    # NullPool: each asyncio.run() has its own loop, and pooled connections belong to one.
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    async def run(sql: str) -> None:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(sql)

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(admin.dispose())


@pytest.mark.parametrize("block", ENV_BLOCKS)
def test_configuration_snippets_are_valid_settings(
    block: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import Settings

    for var in list(os.environ):
        if var.upper().startswith(("DATABASE", "REDIS", "APP__", "CACHE__")):
            monkeypatch.delenv(var)
    lines = [ln for ln in block.splitlines() if re.match(r"^[A-Z_]+=", ln)]
    assert lines
    for line in lines:
        name, _, value = line.partition("=")
        value = value.split("  #", 1)[0].strip().strip("'")
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for password in re.findall(r"://[^:/@]*:([^@]+)@", block):
        assert password not in repr(settings)


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
