"""Migrations: generated from the example models, applied, reverted and re-applied on real
databases (a fresh one per test: Alembic's version table lives in the default schema)."""

from __future__ import annotations

import ast
import asyncio
import configparser
import contextlib
import io
import shutil
import string
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.util import CommandError
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, String, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import Settings
from core.database import DatabaseManager
from core.migrations import (
    MigrationError,
    check,
    current,
    downgrade,
    history,
    init,
    load_config,
    load_metadata,
    make_config,
    parse_metadata_ref,
    revision,
    upgrade,
    upgrade_to_head,
)
from core.migrations.runtime import MIGRATION_LOCK_KEY
from core.models import NAMING_CONVENTION
from core.testing import create_database, drop_database
from examples.users.models import User

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MIGRATIONS = REPO / "examples" / "migrations"
EXAMPLE_INI = REPO / "alembic.ini"
EXAMPLE_METADATA = "examples.users.models:Base.metadata"


def users_metadata(*extra_columns: Column[Any]) -> MetaData:
    """Only the example's table: `Base.metadata` also holds models other tests define."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    table = User.__table__.to_metadata(metadata)
    for column in extra_columns:
        table.append_column(column)
    return metadata


def fetch(url: URL, sql: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Alembic prepends `prepend_sys_path` to sys.path each time it reads a configuration.
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def fresh_db(database_url: str) -> Iterator[URL]:
    """A database created for this test, dropped afterwards."""
    url = asyncio.run(create_database(database_url, prefix="dctest"))
    try:
        yield url
    finally:
        asyncio.run(drop_database(url, via=database_url))


def settings_for(url: URL | str) -> Settings:
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    return Settings(database={"url": url, "connect_timeout": 5}, app={"environment": "test"})


def operations(path: str, function: str) -> list[ast.stmt]:
    tree = ast.parse(Path(path).read_text())
    body = next(
        node.body
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == function
    )
    return [node for node in body if not isinstance(node, ast.Pass)]


def test_generated_migration_applies_reverts_and_reapplies(tmp_path: Path, fresh_db: URL) -> None:
    ini = init(tmp_path / "migrations", EXAMPLE_METADATA, config_file=tmp_path / "alembic.ini")
    cfg = load_config(ini, settings=settings_for(fresh_db))
    cfg.attributes["target_metadata"] = users_metadata()

    script = revision(cfg, "create users")
    assert script.path is not None
    source = Path(script.path).read_text()
    assert "op.create_table('users'," in source.replace("\n", "").replace("    ", "")
    assert "name=op.f('pk_users')" in source
    assert "deferrable=True, initially='DEFERRED', name=op.f('uq_users_email')" in source
    assert [s.revision for s in history(cfg)] == [script.revision]

    constraint = (
        "SELECT condeferrable, condeferred FROM pg_constraint WHERE conname = 'uq_users_email'"
    )
    upgrade(cfg)
    assert current(cfg) == [script.revision]
    assert fetch(fresh_db, constraint) == [(True, True)]

    downgrade(cfg, "base")
    assert current(cfg) == []
    assert fetch(fresh_db, "SELECT to_regclass('users') IS NULL") == [(True,)]

    upgrade(cfg)
    assert current(cfg) == [script.revision]
    assert fetch(fresh_db, constraint) == [(True, True)]


def test_committed_example_migrations_match_the_models(tmp_path: Path, fresh_db: URL) -> None:
    shutil.copytree(EXAMPLE_MIGRATIONS, tmp_path / "migrations")
    cfg = make_config(
        tmp_path / "migrations", settings=settings_for(fresh_db), metadata=users_metadata()
    )
    upgrade(cfg)
    assert current(cfg) == ["0001_users"]

    # The models match the migrated schema (said on the stdout of the moment, redirected
    # here), and a model change would be detected...
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        check(cfg)
    assert "No new upgrade operations detected" in said.getvalue()
    cfg.attributes["target_metadata"] = users_metadata(Column("nickname", String(50)))
    with pytest.raises(CommandError, match="nickname"):
        check(cfg)

    # ...so autogenerate on the up-to-date schema writes an empty migration.
    cfg.attributes["target_metadata"] = users_metadata()
    script = revision(cfg, "nothing changed")
    assert script.path is not None
    assert operations(script.path, "upgrade") == []
    assert operations(script.path, "downgrade") == []


@pytest.mark.anyio
async def test_upgrade_to_head_on_the_managers_engine_is_idempotent_and_serialised(
    database_url: str,
) -> None:
    url = await create_database(database_url, prefix="dctest")
    managers = [DatabaseManager(settings_for(url)) for _ in range(2)]
    try:
        with anyio.fail_after(60):
            # Two apps starting at once in one process: one migrates, the other finds it done.
            async with anyio.create_task_group() as tg:
                for db in managers:
                    tg.start_soon(partial(upgrade_to_head, db, config_file=EXAMPLE_INI))
            await upgrade_to_head(managers[0], EXAMPLE_MIGRATIONS)
        async with managers[0].engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            deferred = await conn.scalar(
                text("SELECT condeferred FROM pg_constraint WHERE conname = 'uq_users_email'")
            )
        assert (version, deferred) == ("0001_users", True)
    finally:
        for db in managers:
            await db.close()
        await drop_database(url, via=database_url)


@pytest.mark.anyio
async def test_migrations_wait_for_the_advisory_lock(database_url: str) -> None:
    url = await create_database(database_url, prefix="dctest")
    db = DatabaseManager(settings_for(url))
    holder = create_async_engine(url)
    try:
        async with holder.connect() as conn:
            await conn.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            # Another process is migrating: this one waits instead of racing it.
            with anyio.move_on_after(0.5) as waited:
                await upgrade_to_head(db, EXAMPLE_MIGRATIONS)
            assert waited.cancelled_caught
            await conn.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
        with anyio.fail_after(30):
            await upgrade_to_head(db, EXAMPLE_MIGRATIONS)
        async with db.engine.connect() as conn:
            assert (
                await conn.scalar(text("SELECT version_num FROM alembic_version")) == "0001_users"
            )
    finally:
        await db.close()
        await holder.dispose()
        await drop_database(url, via=database_url)


def test_offline_sql_needs_no_database(capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = "postgresql://postgres:not-used@127.0.0.1:1/nowhere"
    upgrade(make_config(EXAMPLE_MIGRATIONS, settings=settings_for(unreachable)), sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE users" in out
    assert "CONSTRAINT uq_users_email UNIQUE (email) DEFERRABLE INITIALLY DEFERRED" in out
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001_users')" in out


def test_migrations_run_on_an_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not under pytest's basetemp: a pytest session starting elsewhere on the machine makes
    # that tree private (0700) while the server's own account still needs to reach it.
    with tempfile.TemporaryDirectory(prefix="dctest-", ignore_cleanup_errors=True) as project:
        monkeypatch.chdir(project)  # the embedded server keeps its data in ./.dualcore
        cfg = make_config(EXAMPLE_MIGRATIONS, settings=settings_for("embedded"))
        upgrade(cfg)
        assert current(cfg) == ["0001_users"]
        assert (Path(project) / ".dualcore" / "postgres" / "PG_VERSION").exists()


@pytest.mark.anyio
async def test_sync_commands_also_work_inside_a_running_event_loop(fresh_db: URL) -> None:
    cfg = make_config(EXAMPLE_MIGRATIONS, settings=settings_for(fresh_db))
    upgrade(cfg)  # runs on a worker thread's loop, as this one is busy
    assert current(cfg) == ["0001_users"]


def test_init_refuses_to_overwrite_and_validates(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(MigrationError, match="not an empty directory"):
        init(tmp_path / "busy", EXAMPLE_METADATA, config_file=tmp_path / "a.ini")
    init(tmp_path / "m1", EXAMPLE_METADATA, config_file=tmp_path / "a.ini")
    with pytest.raises(MigrationError, match="already exists"):
        init(tmp_path / "m2", EXAMPLE_METADATA, config_file=tmp_path / "a.ini")
    with pytest.raises(MigrationError, match=r"package\.module:Base\.metadata"):
        init(tmp_path / "m3", "examples.users.models", config_file=tmp_path / "b.ini")
    assert sorted(p.name for p in (tmp_path / "m1").iterdir()) == [
        "env.py",
        "script.py.mako",
        "versions",
    ]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(tmp_path / "a.ini")
    assert "sqlalchemy.url" not in parser["alembic"]


def test_metadata_and_config_errors_are_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MigrationError, match="cannot import 'no_such_module_dc'"):
        load_metadata("no_such_module_dc:metadata")
    with pytest.raises(MigrationError, match="no attribute path 'nope'"):
        load_metadata("examples.users.models:Base.nope")
    with pytest.raises(MigrationError, match="not a SQLAlchemy MetaData"):
        load_metadata("examples.users.models:User")
    assert load_metadata(EXAMPLE_METADATA) is User.metadata
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MigrationError, match="run `dualcore db init` first"):
        load_config()


IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


@given(
    module=st.lists(IDENTIFIER, min_size=1, max_size=4),
    attrs=st.lists(IDENTIFIER, min_size=1, max_size=3),
)
def test_metadata_references_round_trip(module: list[str], attrs: list[str]) -> None:
    assert parse_metadata_ref(f"{'.'.join(module)}:{'.'.join(attrs)}") == (".".join(module), attrs)


@given(st.text(min_size=1, max_size=40))
def test_malformed_metadata_references_are_rejected(ref: str) -> None:
    module, sep, attrs = ref.strip().partition(":")
    well_formed = (
        sep
        and all(part.isidentifier() and part.isascii() for part in module.split("."))
        and all(part.isidentifier() and part.isascii() for part in attrs.split("."))
    )
    if well_formed:
        parse_metadata_ref(ref)
    else:
        with pytest.raises(ValueError, match="must look like"):
            parse_metadata_ref(ref)


@settings(max_examples=25, deadline=None)
@given(st.text(string.ascii_letters + string.digits + " %()$-_.", min_size=1, max_size=20))
def test_init_writes_any_folder_name_so_alembic_reads_it_back(name: str) -> None:
    if name.strip(" .") == "" or name != name.strip():
        name = f"d{name.strip()}d"
    with tempfile.TemporaryDirectory() as tmp:
        ini = init(Path(tmp) / name, EXAMPLE_METADATA, config_file=Path(tmp) / "alembic.ini")
        cfg = load_config(ini)
        assert Path(cfg.get_main_option("script_location") or "") == (Path(tmp) / name).absolute()
        assert cfg.get_main_option("dualcore.metadata") == EXAMPLE_METADATA
        assert cfg.get_prepend_sys_paths_list() == [str(Path(tmp).absolute())]


def test_the_example_uses_the_current_templates() -> None:
    template = REPO / "core" / "migrations" / "template"
    for name in ("env.py", "script.py.mako"):
        assert (EXAMPLE_MIGRATIONS / name).read_text() == (template / name).read_text(), name
