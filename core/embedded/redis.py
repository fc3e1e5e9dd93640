"""Embedded Redis."""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from core.embedded.accounts import check_runnable, chown_tree, restrict_tree, write_private
from core.embedded.binaries import find_redis_server
from core.embedded.processes import POLL, looks_like, pid_alive, url_host
from core.embedded.server import Server

__all__ = ["EmbeddedRedis"]

logger = logging.getLogger(__package__)


def _redis_quote(value: str) -> str:
    """`value` as a Redis configuration argument, whatever characters it holds."""
    return '"' + "".join(f"\\x{byte:02x}" for byte in value.encode()) + '"'


class EmbeddedRedis(Server):
    """A real Redis server on a loopback TCP port, working in a private directory.

    Every client must give the password (`requirepass`): `url` carries it. Runs as an
    unprivileged account when started by root; its files are for that account only.
    """

    _program = "redis-server"
    _log_name = "redis.log"
    _pid_name = "redis.pid"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(data_dir, port=port, host=host, password=password)
        self.extra_args = list(extra_args)
        self._binary: Path | None = None

    def _make_url(self, secret: str | None) -> str:
        # Database 0.
        return f"redis://{self._userinfo('', secret)}{url_host(self.host)}:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start the server; returns once it answers PING."""
        self._start(timeout)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait, SIGKILL after `timeout`. Idempotent."""
        self._halt(signal.SIGTERM, timeout)

    def _after_stop(self) -> None:
        (self.data_dir / self._pid_name).unlink(missing_ok=True)

    def _prepare(self, deadline: float) -> None:
        if self._binary is None:
            self._binary = find_redis_server()
        self._place(deadline)
        check_runnable(self._binary, self._account)
        self.data_dir.mkdir(exist_ok=True, mode=0o700)
        if self._account is None:
            restrict_tree(self.data_dir)
        elif self.data_dir.stat().st_uid != self._account.pw_uid:
            # Dumps and append-only files of an older dualcore were readable by everyone.
            # Restricted while still ours, before the account could swap in links.
            restrict_tree(self.data_dir)
            chown_tree(self.data_dir, self._account)
        if self._settle_password():
            # A server left running knows no password, or another one.
            self._stop_leftover(deadline)
            self._store_password()

    def _stdin(self) -> bytes:
        assert self._password is not None
        return f"requirepass {_redis_quote(self._password)}\n".encode()

    def _command(self, port: int) -> list[str]:
        assert self._binary is not None
        return [
            str(self._binary),
            "-",  # the rest of the configuration, the password among it, comes on stdin
            *("--port", str(port), "--bind", self.host),
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.data_dir.resolve()), "--daemonize", "no"),
            *self.extra_args,
        ]

    def _spawn(self, port: int, log: IO[bytes]) -> None:
        super()._spawn(port, log)
        write_private(self.data_dir / self._pid_name, f"{self._pid}\n", None)

    def _is_ready(self) -> bool:
        return self._pid is not None and _redis_ping(self.host, self.port, 0.25)

    def _leftover_pid(self) -> int | None:
        try:
            return int((self.data_dir / self._pid_name).read_text().strip())
        except (OSError, ValueError):
            return None

    def _adopt(self, deadline: float) -> bool:
        pid = self._leftover_pid()
        if pid is None or not pid_alive(pid) or not looks_like(pid, "redis-server", self.data_dir):
            return False
        self._pid = pid
        port = self._stored_port()
        if port is not None and (self._auto_port or port == self._port):
            self._port = port
            while time.monotonic() < deadline:
                if self._is_ready():
                    logger.info("reusing the server already running in %s", self.data_dir)
                    return True
                time.sleep(POLL)
        logger.info("stopping the server left running in %s", self.data_dir)
        self._terminate(signal.SIGTERM, max(deadline - time.monotonic(), 1))
        return False


def _redis_ping(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            # A server with requirepass answers -NOAUTH: it is up, it just wants a password.
            return reply.startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
