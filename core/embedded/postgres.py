"""Embedded PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import signal
import subprocess
import time
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from core.embedded.accounts import (
    PASSWORD_FILE,
    as_account,
    check_runnable,
    chown_tree,
    read_password,
    write_private,
)
from core.embedded.binaries import find_postgres_bin_dir, postgres_major
from core.embedded.errors import EmbeddedServerError
from core.embedded.processes import POLL, child_env, looks_like, pid_alive, url_host
from core.embedded.server import Server

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger(__package__)

_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

_HBA = """\
# Written by dualcore: password (SCRAM) authentication for every connection.
local all all scram-sha-256
host all all all scram-sha-256
host replication all all scram-sha-256
"""


class EmbeddedPostgres(Server):
    """A real PostgreSQL server in a private data directory on a loopback TCP port.

    The directory is initialised on first start (UTF8, C locale) and kept; starting again
    reuses it. Every connection must give the password (SCRAM-SHA-256): `url` carries it. Runs
    as an unprivileged account when started by root.
    """

    _program = "postgres"
    _start_timeout = 60.0
    _stop_signal = signal.SIGINT
    _stop_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        user: str = "postgres",
        database: str = "postgres",
        password: str | None = None,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port=port, host=host, password=password)
        self.user = user
        self.database = database
        self.server_settings = dict(server_settings or {})
        self._bin_dir: Path | None = None

    def _make_url(self, secret: str | None) -> str:
        # SQLAlchemy URL, asyncpg driver.
        userinfo = self._userinfo(self.user, secret)
        return f"postgresql+asyncpg://{userinfo}{url_host(self.host)}:{self.port}/{self.database}"

    @property
    def bin_dir(self) -> Path:
        """The directory of the PostgreSQL binaries in use."""
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        return self._bin_dir

    def start(self, timeout: float = 60) -> None:
        """Initialise the data directory if needed and start; returns once connections work."""
        self._start(timeout)

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Shut down (`smart`, `fast` or `immediate`); SIGKILL after `timeout`. Idempotent."""
        if mode not in _PG_STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_PG_STOP_SIGNALS)}, got {mode!r}")
        self._halt(_PG_STOP_SIGNALS[mode], timeout)

    # -- data directory --

    def _prepare(self, deadline: float) -> None:
        initialised = (self.data_dir / "PG_VERSION").exists()
        # Checked before anything moves or is created.
        if initialised:
            self._check_version()
        elif self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} is not empty and is not a PostgreSQL data directory"
            )
        self._place(deadline)
        check_runnable(self.bin_dir / "postgres", self._account)
        if not initialised:
            self._initdb(deadline)
        elif self._account is not None and self.data_dir.stat().st_uid != self._account.pw_uid:
            chown_tree(self.data_dir, self._account)
        # PostgreSQL refuses a data directory others can read.
        os.chmod(self.data_dir, 0o700)
        self._require_password(deadline, initialised)

    def _check_version(self) -> None:
        made_by = (self.data_dir / "PG_VERSION").read_text().strip()
        running = postgres_major(self.bin_dir)
        if made_by != running:
            raise EmbeddedServerError(
                f"{self.data_dir} was created by PostgreSQL {made_by}, but the binaries in "
                f"{self.bin_dir} are PostgreSQL {running}; delete the directory (its data is "
                f"lost) or install PostgreSQL {made_by}"
            )

    def _run_tool(self, cmd: list[str], deadline: float, what: str, stdin: bytes = b"") -> None:
        """Run a PostgreSQL program on the data directory as the server account."""
        try:
            result = subprocess.run(
                cmd,
                input=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=self.data_dir,
                timeout=max(deadline - time.monotonic(), 1),
                check=False,
                **as_account(self._account),
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"{what} of {self.data_dir} timed out") from None
        output = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or "\nERROR:" in f"\n{output}":
            raise EmbeddedServerError(f"{what} of {self.data_dir} failed:\n{output}")

    def _initdb(self, deadline: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._account is not None:
            os.chown(self.data_dir, self._account.pw_uid, self._account.pw_gid)
        # Trust is only what initdb writes: no server runs before _require_password replaces it.
        cmd = [
            str(self.bin_dir / "initdb"),
            *("-D", str(self.data_dir.resolve()), "-U", self.user),
            *("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
        ]
        self._run_tool(cmd, deadline, "initdb")

    def _require_password(self, deadline: float, initialised: bool) -> None:
        """Give the role its password and accept nothing but that password (SCRAM).

        Also turns a data directory of an older dualcore (trust authentication, no password
        file) into a protected one. Done in single-user mode: no server listens meanwhile.
        """
        if not self._settle_password():
            return
        assert self._password is not None
        if initialised and read_password(self.data_dir) is None:
            logger.warning(
                "%s accepted every local connection without a password (made by an older "
                "dualcore): it now requires the password kept in %s",
                self.data_dir,
                self.data_dir / PASSWORD_FILE,
            )
        # A server left running would hold the directory (and the old password).
        self._stop_leftover(deadline)
        role = '"' + self.user.replace('"', '""') + '"'
        verifier = _scram_verifier(self._password)
        cmd = [str(self.bin_dir / "postgres"), "--single", "-D", str(self.data_dir.resolve())]
        cmd += ["-c", "unix_socket_directories=", "-c", "listen_addresses=", "template1"]
        try:
            self._run_tool(
                cmd,
                deadline,
                "setting the password",
                f"ALTER ROLE {role} PASSWORD '{verifier}'\n".encode(),
            )
        except EmbeddedServerError as exc:
            raise EmbeddedServerError(str(exc).replace(verifier, "***")) from None
        write_private(self.data_dir / "pg_hba.conf", _HBA, self._account)
        # Last: a start interrupted before this point sets the password again.
        self._store_password()

    # -- process --

    def _command(self, port: int) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(port),
            # No Unix socket: the machine's server owns the default one, and long temporary
            # paths exceed the socket path limit.
            "unix_socket_directories": "",
            "fsync": "off",
            **self.server_settings,
        }
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir.resolve())]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        return cmd

    def _pid_file(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _leftover_pid(self) -> int | None:
        lines = self._pid_file()
        return int(lines[0]) if lines and lines[0].strip().isdigit() else None

    def _is_ready(self) -> bool:
        lines = self._pid_file()
        # Line 1 is the postmaster's pid, line 8 its status ("ready" once it accepts connections).
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self._pid)
            and lines[7].strip() == "ready"
            and pid_alive(int(lines[0]))
        )

    def _adopt(self, deadline: float) -> bool:
        pid = self._leftover_pid()
        if pid is None or not pid_alive(pid):
            return False  # stale lock file: PostgreSQL removes it itself
        if not looks_like(pid, "postgres", self.data_dir):
            # The pid was reused by an unrelated process; PostgreSQL would refuse to start.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            return False
        self._pid = pid
        while not self._is_ready():
            if not pid_alive(pid):
                self._forget()
                return False
            if time.monotonic() > deadline:
                self._forget()
                raise EmbeddedServerError(f"a server already running in {self.data_dir} hangs")
            time.sleep(POLL)
        lines = self._pid_file()
        port, listen = int(lines[3]), lines[5].strip()
        if listen != self.host or (not self._auto_port and port != self._port):
            logger.info("stopping the server left running in %s (other address)", self.data_dir)
            self._terminate(signal.SIGINT, max(deadline - time.monotonic(), 1))
            return False
        self._port = port
        logger.info("reusing the server already running in %s", self.data_dir)
        return True

    def _after_start(self, deadline: float) -> None:
        if self.database == "postgres":
            return
        cmd = [
            str(self.bin_dir / "createdb"),
            *("-h", self.host, "-p", str(self.port), "-U", self.user, self.database),
        ]
        # In the environment, not argv: other users can read a process's argv, not its env.
        env = {**child_env(), "PGPASSWORD": self.password or ""}
        result = subprocess.run(
            cmd,
            capture_output=True,
            env=env,
            timeout=max(deadline - time.monotonic(), 5),
            check=False,
        )
        output = result.stderr.decode(errors="replace")
        if result.returncode != 0 and "already exists" not in output:
            raise EmbeddedServerError(f"could not create database {self.database!r}: {output}")


def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677).

    Handing PostgreSQL the verifier instead of the password keeps the password out of any
    statement it could log.
    """
    salt = secrets.token_bytes(16)
    # PostgreSQL applies SASLprep; NFKC is its core for the passwords people type.
    secret = unicodedata.normalize("NFKC", password).encode()
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    salt64, stored64, server64 = (
        base64.b64encode(x).decode() for x in (salt, stored_key, server_key)
    )
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"
