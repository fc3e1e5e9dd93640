"""Running the code blocks of Markdown files as tests: README.md
(tests/integrations/test_readme.py) and the documentation under docs/
(tests/integrations/test_docs.py) share this machinery.

Python blocks are executed in a module of their own against the real PostgreSQL and Redis of the
test run; an `app` they define is exercised through its framework's test client. Blocks that are
files of a test suite (`# conftest.py`, `# test_*.py` on their first line) run together through
pytester. `dualcore db ...` blocks run against a database of their own, and environment blocks
(`text` blocks of `NAME=value` lines) must load as valid settings.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import get_settings

ROOT = Path(__file__).resolve().parents[2]


def blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order (indented fences included, dedented)."""
    found = []
    for match in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```", markdown, re.S | re.M):
        indent, lang, code = match.groups()
        if indent:
            code = "\n".join(line[len(indent) :] for line in code.splitlines()) + "\n"
        found.append((lang, code))
    return found


def framework_of(code: str) -> str | None:
    """The framework a Python block uses, None for a framework-free block."""
    for name in ("fastapi", "litestar"):
        if f"from {name}" in code or f"integrations.{name}" in code:
            return name
    return None


def is_test_file(code: str) -> bool:
    """A block that is one file of a test suite (`# conftest.py`, `# test_*.py`)."""
    return code.startswith(("# conftest.py", "# test_"))


def is_env_block(lang: str, code: str) -> bool:
    """A `text` block of environment settings (`NAME=value` lines)."""
    return lang == "text" and re.search(r"^[A-Z_]+=", code, re.M) is not None


def python_params(
    python_blocks: list[str], frameworks: list[str], prefix: str = "block"
) -> list[Any]:
    """pytest params for the runnable Python blocks whose framework is installed."""
    params = []
    for i, code in enumerate(python_blocks):
        if is_test_file(code):
            continue
        fw = framework_of(code)
        if fw is None or fw in frameworks:
            params.append(pytest.param(code, id=f"{prefix}{i}-{fw or 'core'}"))
    return params


@pytest.fixture
def block_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str, key_prefix: str
) -> Iterator[None]:
    """The test run's servers as the blocks' `DATABASE_URL` / `REDIS_URL`, a private prefix."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS__KEY_PREFIX", key_prefix)
    monkeypatch.setenv("APP__NAME", f"readme-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run_python_block(code: str, filename: str) -> None:
    """Execute `code`; exercise the `app` it defines, if any."""
    # A real module, since frameworks resolve annotations through sys.modules.
    module = types.ModuleType(f"readme_block_{uuid.uuid4().hex[:8]}")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, filename, "exec"), module.__dict__)
        exercise(code, module.__dict__.get("app"))
    finally:
        del sys.modules[module.__name__]


def exercise(code: str, app: Any) -> None:
    """Start `app` through its framework's test client and call the routes the block defines."""
    if app is None:
        return
    fw = framework_of(code)
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


def run_plugin_suite(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    python_blocks: list[str],
    database_url: str,
    redis_url: str,
) -> pytest.RunResult:
    """The blocks that are files of a test suite, run as one with pytester."""
    files = {
        code.split("\n", 1)[0][2:].strip(): code for code in python_blocks if is_test_file(code)
    }
    assert "conftest.py" in files, sorted(files)
    monkeypatch.setenv("DUALCORE_TEST_DATABASE_URL", database_url)
    monkeypatch.setenv("DUALCORE_TEST_REDIS_URL", redis_url)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest(files.pop("conftest.py"))
    pytester.makepyfile(**{name.removesuffix(".py"): code for name, code in files.items()})
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=180)


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """A database of its own for commands that create tables in the default schema."""
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


def run_migration_block(block: str, tmp_path: Path, database_url: str) -> None:
    """Run every `dualcore db ...` line of `block` against `database_url`, with the example's
    models standing in for the `app.models` the block names."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text("from examples.users.models import Base, User  # noqa: F401\n")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
    }
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        if not command:
            continue
        argv = command.split()
        assert argv[0] == "dualcore"
        if argv[:3] == ["dualcore", "db", "revision"] and '"add' in argv:
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


def check_settings_block(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block's `NAME=value` lines load as valid settings, and hide the passwords they hold."""
    from core.config import Settings

    for var in list(os.environ):
        if var.upper().startswith(("DATABASE", "REDIS", "APP__", "CACHE__", "OBSERVABILITY__")):
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
