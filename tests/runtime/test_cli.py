"""The `dualcore` command line: `check` against working and broken setups, `db ...`, `--help`."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.cli import build_parser, main
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core.testing import create_database, drop_database

REPO = Path(__file__).resolve().parents[2]
CANARY_PG = "Canary-Pg-7f3a9c"
CANARY_REDIS = "Canary-Redis-51be0d"


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m core ARGS` with only the given settings in its environment."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("DATABASE", "REDIS", "APP_", "CACHE_", "DUALCORE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        env={**clean, "DATABASE__CONNECT_TIMEOUT": "5", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def password_servers() -> Iterator[tuple[int, int]]:
    """Private PostgreSQL and Redis that check passwords (the shared ones trust everyone)."""
    # Not under pytest's basetemp: a pytest session starting elsewhere on the machine makes
    # that tree private (0700) while the server's own account still needs to reach it.
    with tempfile.TemporaryDirectory(prefix="dctest-", ignore_cleanup_errors=True) as tmp:
        base = Path(tmp)
        pg = EmbeddedPostgres(base / "pg", password="the-right-one")
        with pg, EmbeddedRedis(base / "redis", password="the-right-one") as server:
            yield pg.port, server.port


def test_check_passes_against_working_servers(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    result = run_cli(
        "check", env={"DATABASE_URL": database_url, "REDIS_URL": redis_url}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["PostgreSQL"][1] == "ok"
    assert rows["Redis"][1] == "ok"
    assert "Effective configuration (secrets masked)" in result.stdout


def test_check_fails_on_a_wrong_port_and_says_what_to_fix(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    result = run_cli("check", env={"DATABASE_URL": url, "REDIS_URL": redis_url}, cwd=tmp_path)
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("PostgreSQL"))
    assert "fail" in line
    assert f"127.0.0.1:{port}" in line
    assert "DATABASE_URL" in line


def test_check_with_wrong_passwords_fails_without_printing_them(
    password_servers: tuple[int, int], tmp_path: Path
) -> None:
    pg_port, redis_port = password_servers
    env = {
        "DATABASE_URL": f"postgresql://postgres:{CANARY_PG}@127.0.0.1:{pg_port}/postgres",
        "REDIS_URL": f"redis://:{CANARY_REDIS}@127.0.0.1:{redis_port}/0",
    }
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert CANARY_PG not in output
    assert CANARY_REDIS not in output
    failed = [x.split()[0] for x in result.stdout.splitlines() if " fail " in f" {x} "]
    assert failed == ["PostgreSQL", "Redis"]


def test_db_upgrade_with_a_wrong_password_is_readable_and_secret(
    password_servers: tuple[int, int], tmp_path: Path
) -> None:
    pg_port, _ = password_servers
    url = f"postgresql://postgres:{CANARY_PG}@127.0.0.1:{pg_port}/postgres"
    result = run_cli(
        "db", "upgrade", "-c", str(REPO / "alembic.ini"), env={"DATABASE_URL": url}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert CANARY_PG not in result.stdout + result.stderr
    assert f"cannot connect to PostgreSQL at postgresql+asyncpg://postgres@127.0.0.1:{pg_port}" in (
        result.stderr
    )
    assert "InvalidPasswordError" in result.stderr
    assert "Traceback" not in result.stderr


def _commands(parser: argparse.ArgumentParser) -> list[list[str]]:
    found: list[list[str]] = [[]]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [[name, *rest] for rest in _commands(sub)]
    return found


COMMANDS = _commands(build_parser())


def test_every_command_is_listed() -> None:
    expected = [["check"], ["demo"], ["db"], ["db", "init"], ["db", "revision"], ["db", "upgrade"]]
    expected += [["db", "downgrade"], ["db", "current"], ["db", "history"], ["db", "check"]]
    assert all(command in COMMANDS for command in expected)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dualcore")
def test_help_works_for_every_command(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dualcore {' '.join(command)}".rstrip())
    assert "-h, --help" in out


def test_module_entry_point_shows_help(tmp_path: Path) -> None:
    result = run_cli("--help", env={}, cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: dualcore" in result.stdout
    assert "db" in result.stdout


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> Iterator[tuple[Path, str]]:
    """A project folder with a models module, pointed at a database of its own."""
    module = f"dc_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from sqlalchemy import Column, Integer, MetaData, String, Table\n"
        "from core.models import NAMING_CONVENTION\n"
        "metadata = MetaData(naming_convention=NAMING_CONVENTION)\n"
        "Table('things', metadata, Column('id', Integer, primary_key=True),\n"
        "      Column('name', String(50), unique=True))\n"
    )
    url = asyncio.run(create_database(database_url, prefix="dctest"))
    for name in list(os.environ):
        if name.upper().startswith(("DATABASE", "REDIS")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        yield tmp_path, module
    finally:
        sys.modules.pop(module, None)
        asyncio.run(drop_database(url, via=database_url))


def test_db_commands_end_to_end(
    project: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, module = project

    def run(*args: str) -> tuple[str, str]:
        assert main(["db", *args]) == 0, capsys.readouterr().err
        captured = capsys.readouterr()
        return captured.out, captured.err

    out, _ = run("init", "migrations", "--metadata", f"{module}:metadata")
    assert (folder / "alembic.ini").is_file()
    assert (folder / "migrations" / "env.py").is_file()
    assert "no migration applied yet" in run("current")[0]

    out, _ = run("revision", "-m", "create things", "--autogenerate", "--rev-id", "0001_things")
    assert "created revision 0001_things" in out
    _, err = run("upgrade")
    assert "Running upgrade  -> 0001_things, create things" in err
    assert "Context impl" not in err
    assert run("current")[0].strip() == "0001_things (head)"
    assert run("history")[0].strip() == "<base> -> 0001_things (head), create things"
    assert "match" in run("check")[0]
    _, err = run("downgrade", "base")
    assert "Running downgrade 0001_things -> , create things" in err
    assert "no migration applied yet" in run("current")[0]


def test_db_command_failures_exit_non_zero_with_a_message(
    project: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["db", "upgrade"]) == 1
    assert "run `dualcore db init` first" in capsys.readouterr().err

    assert main(["db", "init", "--metadata", "not a reference"]) == 1
    assert "must look like 'package.module:Base.metadata'" in capsys.readouterr().err

    monkeypatch.setenv("DATABASE_URL", "mysql://root:pw@localhost/db")
    assert main(["db", "current"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err
    assert "pw@" not in err
