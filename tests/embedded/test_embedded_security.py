"""Embedded servers are their owner's alone: passwords, an unprivileged account, private files,
and nothing outside their data directory opened up to reach them."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import anyio
import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from core.config import EMBEDDED, Settings
from core.database import DatabaseManager
from core.embedded import (
    PASSWORD_FILE,
    RELOCATION_ROOT,
    SERVER_ACCOUNT,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    postgres,
    start_embedded_postgres,
    start_embedded_redis,
)
from core.redis_client import RedisManager

ROOT = os.geteuid() == 0

_TRUST_HBA = "local all all trust\nhost all all all trust\nhost replication all all trust\n"


def _settings() -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, database={"url": EMBEDDED}, redis={"url": EMBEDDED}
    )


def _refuses_anonymous(port: int) -> None:
    with (
        redis.Redis(port=port, socket_timeout=5) as anonymous,
        pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"),
    ):
        anonymous.get("kept")


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, check=True, timeout=10
    )
    pairs = [tuple(int(x) for x in line.split()) for line in out.stdout.splitlines()]
    return [child for child, parent in pairs if parent == pid]


def _modes(path: Path) -> dict[Path, int]:
    """The permission bits of `path` and of every directory above it."""
    return {p: stat.S_IMODE(p.stat().st_mode) for p in (path, *path.parents)}


def _dsn(server: EmbeddedPostgres, password: str | None) -> str:
    secret = f":{password}" if password is not None else ""
    return f"postgresql://{server.user}{secret}@{server.host}:{server.port}/{server.database}"


async def _pg_user(dsn: str) -> str:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


# --- finding: the servers were open to every local user ---------------------------------------


@pytest.mark.anyio
async def test_postgres_requires_its_password(pg: EmbeddedPostgres) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _pg_user(_dsn(pg, None))
    assert pg.password
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _pg_user(_dsn(pg, "guess"))
    assert await _pg_user(pg.url.replace("+asyncpg", "")) == "postgres"
    conn = await asyncpg.connect(pg.url.replace("+asyncpg", ""), timeout=10)
    try:
        methods = await conn.fetch("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
    finally:
        await conn.close()
    assert [row[0] for row in methods] == ["scram-sha-256"]


def test_redis_requires_its_password(rds: EmbeddedRedis) -> None:
    _refuses_anonymous(rds.port)
    assert rds.password
    with redis.Redis.from_url(rds.url, socket_timeout=5) as client:
        assert client.ping()


def test_passwords_are_private_to_each_data_directory(
    pg: EmbeddedPostgres, rds: EmbeddedRedis
) -> None:
    assert pg.password != rds.password
    for server in (pg, rds):
        assert server.password is not None
        assert server.pid is not None
        stored = server.data_dir / PASSWORD_FILE
        assert stored.read_text().strip() == server.password
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        # Every local user can read a process's command line.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert server.password not in cmdline
        if ROOT:
            other = subprocess.run(
                ["cat", str(stored)], user="nobody", capture_output=True, timeout=10, check=False
            )
            assert other.returncode != 0
            assert server.password.encode() not in other.stdout


def test_servers_run_as_an_unprivileged_account(pg: EmbeddedPostgres, rds: EmbeddedRedis) -> None:
    assert pg.pid is not None
    assert rds.pid is not None
    for pid in (pg.pid, *_children(pg.pid), rds.pid):
        if ROOT:
            assert _uid(pid) != 0
            assert _uid(pid) == pwd.getpwnam(SERVER_ACCOUNT).pw_uid
        else:
            assert _uid(pid) == os.geteuid()


@pytest.mark.anyio
async def test_passwords_reach_the_drivers_but_are_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)  # DATABASE_URL=embedded keeps its data in ./.dualcore
    settings = _settings()
    async with DatabaseManager(settings) as db, RedisManager(settings) as rm:
        assert await db.ping() >= 0
        assert await rm.ping() >= 0
        assert ":***@" in db.safe_url
        assert ":***@" in rm.safe_url
        passwords = [
            (tmp_path / ".dualcore" / name / PASSWORD_FILE).read_text().strip()
            for name in ("postgres", "redis")
        ]
        shown = [db.safe_url, rm.safe_url, repr(rm), repr(settings)]
        pg_server, url = await start_embedded_postgres(settings)  # the running one, reused
        try:
            assert url == pg_server.url
            shown += [pg_server.safe_url, repr(pg_server)]
        finally:
            await pg_server.aclose()
        with pytest.raises(Exception) as info:  # noqa: PT011 - any error, as long as it is quiet
            await db.ping()
        shown.append(str(info.value))
    for password in passwords:
        assert password
        for text in (*shown, caplog.text):
            assert password not in text


@pytest.mark.anyio
async def test_start_embedded_redis_url_carries_the_password(tmp_path: Path) -> None:
    server, url = await start_embedded_redis(_settings(), tmp_path / ".dualcore")
    try:
        assert server.password is not None
        assert url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        assert server.safe_url == f"redis://:***@127.0.0.1:{server.port}/0"
        client = aioredis.Redis.from_url(url, socket_timeout=5)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        await server.aclose()


def test_postgres_directory_of_an_older_dualcore_gets_a_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / ".dualcore" / "postgres"
    server = EmbeddedPostgres(data)
    server.start()
    anyio.run(_pg_user, server.url.replace("+asyncpg", ""))
    server.stop()
    # As an older dualcore left it: trust authentication, no password file, files in place.
    real = data.resolve()
    (real / PASSWORD_FILE).unlink(missing_ok=True)
    (real / "pg_hba.conf").write_text(_TRUST_HBA)
    if data.is_symlink():
        data.unlink()
        shutil.move(str(real), str(data))
        (real.parent / f"{real.name}.origin").unlink()

    caplog.set_level(logging.WARNING)
    again = EmbeddedPostgres(data)
    with again:
        with pytest.raises(asyncpg.InvalidPasswordError):
            anyio.run(_pg_user, _dsn(again, None))
        assert again.password is not None
        assert again.password != server.password
        assert anyio.run(_pg_user, again.url.replace("+asyncpg", "")) == "postgres"
    assert "older dualcore" in caplog.text
    assert again.password not in caplog.text


def test_redis_directory_of_an_older_dualcore_gets_a_password(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    with (
        EmbeddedRedis(data, extra_args=["--appendonly", "yes"]) as server,
        redis.Redis.from_url(server.url, socket_timeout=5) as client,
    ):
        client.set("kept", "yes")
    real = data.resolve()
    (real / PASSWORD_FILE).unlink(missing_ok=True)
    # As an older dualcore left it: Redis ran as whoever started it, its files open to all.
    for path in [real, *real.rglob("*")]:
        os.lchown(path, os.geteuid(), os.getegid())
        path.chmod(0o755 if path.is_dir() else 0o644)

    with EmbeddedRedis(data, extra_args=["--appendonly", "yes"]) as again:
        _refuses_anonymous(again.port)
        assert again.password is not None
        with redis.Redis.from_url(again.url, socket_timeout=5) as client:
            assert client.get("kept") == b"yes"
        for path in real.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)


# --- finding: starting a server opened up the directories above its data ----------------------


def test_starting_leaves_the_directories_above_the_data_alone(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    team = private / "team"
    team.mkdir(mode=0o750)
    (team / ".env").write_text("SECRET=1\n")
    before = _modes(team)
    pg = EmbeddedPostgres(team / "pg")
    with pg, EmbeddedRedis(team / "redis") as rds:
        assert _modes(team) == before
        assert anyio.run(_pg_user, pg.url.replace("+asyncpg", "")) == "postgres"
        with redis.Redis.from_url(rds.url, socket_timeout=5) as client:
            assert client.ping()
        if ROOT:
            # The nobody account stands for any other local user.
            other = subprocess.run(
                ["cat", str(team / ".env")], user="nobody", capture_output=True, timeout=10
            )
            assert other.returncode != 0
    assert _modes(team) == before


def test_private_binaries_fail_clearly_instead_of_being_opened_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "home" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / "home").chmod(0o700)
    for name in ("initdb", "postgres"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 3\n")
        (bin_dir / name).chmod(0o755)
    before = _modes(bin_dir)
    monkeypatch.setattr(postgres, "find_postgres_bin_dir", lambda: bin_dir)
    with pytest.raises(EmbeddedServerError) as info:
        EmbeddedPostgres(tmp_path / "data").start()
    assert _modes(bin_dir) == before
    if ROOT:
        assert "cannot be run by the user" in str(info.value)


@pytest.mark.anyio
async def test_base_directory_is_private_and_redis_files_are_its_owners(tmp_path: Path) -> None:
    base = tmp_path / ".dualcore"
    base.mkdir(mode=0o755)  # as an older dualcore made it
    base.chmod(0o755)
    server, url = await start_embedded_redis(_settings(), base)
    try:
        assert stat.S_IMODE(base.stat().st_mode) == 0o700
        client = aioredis.Redis.from_url(url, socket_timeout=5)
        try:
            await client.set("k", "v")
            await client.save()
        finally:
            await client.aclose()
        files = [p for p in server.data_dir.resolve().rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"dump.rdb", PASSWORD_FILE}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        await server.aclose()


def test_files_a_root_started_server_needs_are_placed_where_only_its_account_reaches(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = EmbeddedRedis(data)
    with server:
        real = data.resolve()
        owner = real.stat().st_uid
        assert stat.S_IMODE(real.stat().st_mode) == 0o700
    if ROOT:
        base = RELOCATION_ROOT / "dualcore-0"
        assert data.is_symlink()
        assert real.parent == base
        assert owner == pwd.getpwnam(SERVER_ACCOUNT).pw_uid
        assert (base.stat().st_uid, stat.S_IMODE(base.stat().st_mode)) == (0, 0o711)
        # Data whose directory is gone is removed when another server is placed.
        data.unlink()
        with EmbeddedRedis(tmp_path / "other"):
            assert not real.exists()
    else:
        assert not data.is_symlink()
        assert owner == os.geteuid()
    server.delete()
    assert not data.exists()
    assert not real.exists()
