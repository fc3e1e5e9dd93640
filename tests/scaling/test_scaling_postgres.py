"""PostgreSQL read replicas and PgBouncer, started on loopback ports by these tests.

A primary with two streaming replicas (`pg_basebackup -R`) and a PgBouncer in transaction pooling
mode run as private processes; the tests go through `DatabaseManager` configured by settings.
Every server requires the primary's password: the replicas are copies of its data directory (the
password file included) and PgBouncer authenticates clients with SCRAM against the same password.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.config import Settings
from core.database import DatabaseManager
from core.embedded import EmbeddedPostgres, find_postgres_bin_dir
from core.embedded.accounts import as_account as _as_account
from core.embedded.accounts import relocate as _relocate
from core.embedded.accounts import remove_data as _remove_data
from core.embedded.accounts import server_account as _server_account
from core.redis_client import RedisManager
from core.runtime import Core

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

_WAIT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_backup(primary: EmbeddedPostgres, target: Path) -> None:
    """Clone `primary` into `target` as a streaming replica (standby.signal + primary_conninfo)."""
    result = subprocess.run(
        [
            str(find_postgres_bin_dir() / "pg_basebackup"),
            *("-h", primary.host, "-p", str(primary.port), "-U", primary.user),
            *("-D", str(target), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        # In the environment, not argv; `-R` writes it into the replica's primary_conninfo.
        env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGPASSWORD": primary.password or ""},
    )
    assert result.returncode == 0, f"pg_basebackup failed:\n{result.stderr}"
    # The copy carries the primary's remembered port and its log; the replica has its own.
    (target / "dualcore.port").unlink(missing_ok=True)
    (target / primary.log_path.name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A primary and two hot-standby replicas streaming from it."""
    base = tmp_path_factory.mktemp("pgtopo")
    primary = EmbeddedPostgres(
        base / "primary",
        server_settings={"wal_level": "replica", "max_wal_senders": "10"},
    )
    replicas: list[EmbeddedPostgres] = []
    try:
        primary.start()
        for i in range(2):
            _base_backup(primary, base / f"replica{i}")
            replica = EmbeddedPostgres(
                base / f"replica{i}",
                # The copy's password file holds it already; given, so that it cannot drift.
                password=primary.password,
                server_settings={"hot_standby": "on"},
            )
            replicas.append(replica)
            replica.start()
        yield {"primary": primary, "replicas": replicas}
    finally:
        for server in (*replicas, primary):
            server.stop(mode="immediate")
            # Also the files placed outside pytest's temporary tree for the server account.
            server.delete()


def _settings(topology: dict[str, Any], **database: Any) -> Settings:
    return Settings(
        database={
            "url": topology["primary"].url,
            "replica_urls": [r.url for r in topology["replicas"]],
            "replica_cooloff": 0.5,
            "pool_size": 3,
            "max_overflow": 2,
            **database,
        },
        # Each readiness report is a fresh run: the tests follow the replicas from call to call.
        observability={"health_cache_ttl": 0},
    )


async def _where(db: DatabaseManager, *, read_only: bool) -> tuple[int, bool]:
    """(server port, in recovery) of the server a session lands on."""
    async with db.get_session(read_only=read_only) as session:
        row = (await session.execute(text("SELECT inet_server_port(), pg_is_in_recovery()"))).one()
        return int(row[0]), bool(row[1])


async def _stop(server: EmbeddedPostgres) -> None:
    # In a thread, so the event loop sees the server close its connections meanwhile.
    await anyio.to_thread.run_sync(lambda: server.stop(mode="fast"))


async def _start(server: EmbeddedPostgres) -> None:
    await anyio.to_thread.run_sync(server.start)


async def test_scaling_replicas_serve_reads_round_robin_and_primary_serves_writes(
    topology: dict[str, Any],
) -> None:
    primary, replicas = topology["primary"], topology["replicas"]
    async with DatabaseManager(_settings(topology)) as db:
        async with db.get_session() as session:
            await session.execute(text("CREATE TABLE IF NOT EXISTS scaling_rr (n int)"))
            await session.execute(text("INSERT INTO scaling_rr VALUES (:n)"), {"n": 7})
            # Reads after a write in the same unit of work see it: the session is the primary's.
            assert (await session.execute(text("SELECT count(*) FROM scaling_rr"))).scalar() >= 1
        assert await _where(db, read_only=False) == (primary.port, False)

        with anyio.fail_after(_WAIT):
            while True:
                async with db.get_session(read_only=True) as session:
                    exists = (
                        await session.execute(text("SELECT to_regclass('scaling_rr') IS NOT NULL"))
                    ).scalar()
                if exists:
                    break
                await anyio.sleep(0.05)

        seen = [await _where(db, read_only=True) for _ in range(6)]
        assert all(in_recovery for _, in_recovery in seen)
        ports = [port for port, _ in seen]
        assert set(ports) == {r.port for r in replicas}
        # Round-robin: consecutive reads alternate between the two replicas.
        assert all(a != b for a, b in itertools.pairwise(ports))

        # PostgreSQL itself refuses a write on a replica.
        with pytest.raises(DBAPIError, match="read-only"):
            async with db.get_session(read_only=True) as session:
                await session.execute(text("INSERT INTO scaling_rr VALUES (1)"))


async def _health(lifespan: Core) -> dict[str, Any]:
    report = await lifespan.health.run()
    body = report.to_dict()
    body["ready"] = report.ready
    return body


async def test_scaling_replica_failover_reads_fall_back_and_health_reports_each(
    topology: dict[str, Any], redis_url: str
) -> None:
    primary, (first, second) = topology["primary"], topology["replicas"]
    settings = _settings(topology)
    db = DatabaseManager(settings)
    redis = RedisManager(Settings(redis={"url": redis_url}))
    async with Core(settings, db=db, redis=redis) as lifespan:
        health = await _health(lifespan)
        assert health["checks"]["postgresql-replica-0"] == {
            **health["checks"]["postgresql-replica-0"],
            "status": "ok",
            "required": False,
        }
        assert health["checks"]["postgresql-replica-1"]["status"] == "ok"
        # Fill both replicas' pools, so stopping one leaves dead pooled connections behind.
        assert {(await _where(db, read_only=True))[0] for _ in range(4)} == {
            first.port,
            second.port,
        }

        await _stop(second)
        # Every read still succeeds, none on the stopped replica.
        assert {await _where(db, read_only=True) for _ in range(6)} == {(first.port, True)}
        health = await _health(lifespan)
        assert health["checks"]["postgresql-replica-1"]["status"] == "fail"
        assert health["checks"]["postgresql-replica-0"]["status"] == "ok"
        assert health["ready"] is True

        await _stop(first)
        # No replica left: reads go to the primary.
        assert {await _where(db, read_only=True) for _ in range(4)} == {(primary.port, False)}
        health = await _health(lifespan)
        assert {health["checks"][f"postgresql-replica-{i}"]["status"] for i in (0, 1)} == {"fail"}
        assert health["ready"] is True and health["checks"]["postgresql"]["status"] == "ok"

        await _start(second)
        # After its cool-off the restarted replica serves reads again.
        with anyio.fail_after(_WAIT):
            while await _where(db, read_only=True) != (second.port, True):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        health = await _health(lifespan)
        assert health["checks"]["postgresql-replica-1"]["status"] == "ok"
        await _start(first)


# --- PgBouncer -------------------------------------------------------------------------------


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(found, os.X_OK):
        raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    return found


@pytest.fixture(scope="module")
def pgbouncer(topology: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """PgBouncer in transaction pooling mode with two server connections, in front of the
    primary; yields its URL (with the primary's password, which it requires too)."""
    binary = _pgbouncer_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"(\d+)\.(\d+)", version.stdout)
    assert found is not None, version.stdout
    primary = topology["primary"]
    password = primary.password
    assert password
    # PgBouncer refuses to run as root: it runs as the account the embedded servers use, which
    # cannot reach pytest's private temporary tree. Its files go where the servers' own go then:
    # a directory of that account's, linked from here.
    account = _server_account()
    link = tmp_path_factory.mktemp("pgbouncer") / "files"
    if account is not None:
        _relocate(link, account)
    else:
        link.mkdir(mode=0o700)
    directory = link.resolve()
    try:
        port = _free_port()
        # Plain text: PgBouncer checks the clients' SCRAM logins with it, and logs in to the
        # primary (SCRAM too) with it.
        (directory / "users.txt").write_text(f'"{primary.user}" "{password}"\n')
        lines = [
            "[databases]",
            f"* = host={primary.host} port={primary.port}",
            "[pgbouncer]",
            f"listen_addr = {primary.host}",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {directory / 'users.txt'}",
            "pool_mode = transaction",
            "default_pool_size = 2",
            "max_client_conn = 500",
            f"logfile = {directory / 'pgbouncer.log'}",
        ]
        if (int(found[1]), int(found[2])) >= (1, 21):
            # Newer PgBouncers can track prepared statements; off, as a plain pooler behaves.
            lines.append("max_prepared_statements = 0")
        (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        for path in directory.iterdir():
            path.chmod(0o600)
            if account is not None:
                os.chown(path, account.pw_uid, account.pw_gid)
        proc = subprocess.Popen(
            [binary, str(directory / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **_as_account(account),
        )
        try:
            deadline = time.monotonic() + _WAIT
            while True:
                if proc.poll() is not None:
                    log = (directory / "pgbouncer.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{log}")
                try:
                    socket.create_connection((primary.host, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            userinfo = f"{quote(primary.user, safe='')}:{quote(password, safe='')}"
            yield f"postgresql://{userinfo}@{primary.host}:{port}/postgres"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    finally:
        _remove_data(link)


def _bouncer_settings(url: str, **database: Any) -> Settings:
    return Settings(
        database={
            "url": url,
            "pool_size": 10,
            "max_overflow": 0,
            "pool_timeout": 20,
            **database,
        }
    )


async def _load(
    db: DatabaseManager,
    tasks: range,
    table: str,
    *,
    read_only_share: bool = True,
    hold: float = 0.0,
) -> list[str]:
    """Run one concurrent parametrised session per number in `tasks` (half of them read-only),
    each read-write one holding its transaction `hold` seconds; return the error messages."""
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            if read_only_share and i % 2 == 0:
                async with db.get_session(read_only=True) as session:
                    got = (
                        await session.execute(text("SELECT CAST(:n AS int) * 2"), {"n": i})
                    ).scalar()
                    assert got == i * 2
            else:
                async with db.get_session() as session:
                    await session.execute(text(f"INSERT INTO {table} VALUES (:n)"), {"n": i})
                    if hold:
                        await session.execute(text("SELECT pg_sleep(:s)"), {"s": hold})
                    got = (
                        await session.execute(
                            text(f"SELECT count(*) FROM {table} WHERE n = :n"), {"n": i}
                        )
                    ).scalar()
                    assert got == 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    async with anyio.create_task_group() as tg:
        for i in tasks:
            tg.start_soon(one, i)
    return errors


async def _create_table(db: DatabaseManager, table: str) -> None:
    async with db.get_session() as session:
        await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await session.execute(text(f"CREATE TABLE {table} (n int)"))


async def test_scaling_pgbouncer_transaction_pooling_under_concurrency(pgbouncer: str) -> None:
    # statement_timeout and search_path are set: PgBouncer refuses them as startup parameters,
    # so this also proves the manager does not send them.
    settings = _bouncer_settings(pgbouncer, pgbouncer=True, search_path="public")
    async with DatabaseManager(settings) as first, DatabaseManager(settings) as second:
        await _create_table(first, "scaling_bouncer")
        with anyio.fail_after(120):
            results = await asyncio.gather(
                _load(first, range(200), "scaling_bouncer"),
                _load(second, range(200, 400), "scaling_bouncer"),
            )
        errors = [e for batch in results for e in batch]
        assert errors == []
        async with first.get_session(read_only=True) as session:
            count = (await session.execute(text("SELECT count(*) FROM scaling_bouncer"))).scalar()
        assert count == 200


async def test_scaling_pgbouncer_without_the_setting_prepared_statements_break(
    pgbouncer: str,
) -> None:
    # The control for the test above: the same load with asyncpg's statement caches on.
    settings = _bouncer_settings(pgbouncer, pgbouncer=False, statement_timeout=0)
    async with DatabaseManager(settings) as db:
        await _create_table(db, "scaling_bouncer_control")
        with anyio.fail_after(120):
            # Held transactions keep both server connections busy, so a client connection's
            # next transaction lands on the other one, where its statements do not exist.
            # Without the hold, a quick machine can serve every transaction on one server
            # connection (PgBouncer reuses the last one freed) and nothing breaks.
            errors = await _load(
                db, range(200), "scaling_bouncer_control", read_only_share=False, hold=0.01
            )
    assert any("prepared statement" in e for e in errors), errors[:3]


async def test_scaling_replica_lost_mid_session_sits_out_its_cooloff(
    topology: dict[str, Any],
) -> None:
    settings = _settings(topology, replica_cooloff=30)
    lost: EmbeddedPostgres | None = None
    try:
        async with DatabaseManager(settings) as db:
            assert db.replicas is not None
            with pytest.raises(DBAPIError):  # noqa: PT012 - the session must fail on its replica
                async with db.get_session(read_only=True) as session:
                    port = (await session.execute(text("SELECT inet_server_port()"))).scalar()
                    lost = next(r for r in topology["replicas"] if r.port == port)
                    await _stop(lost)
                    await session.execute(text("SELECT 1"))
            replica = next(r for r in db.replicas if f":{port}/" in r.safe_url)
            assert not db.replicas.is_up(replica)
            # Until its cool-off ends, reads skip it without trying it.
            other = next(r for r in topology["replicas"] if r is not lost)
            assert {await _where(db, read_only=True) for _ in range(4)} == {(other.port, True)}
    finally:
        if lost is not None:
            await _start(lost)
