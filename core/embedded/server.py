"""The lifecycle both servers share: start, adopt, pause, stop, and the exit hook."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread

from core.embedded.accounts import (
    PASSWORD_FILE,
    as_account,
    can_reach,
    new_password,
    read_password,
    relocate,
    remove_data,
    server_account,
    write_private,
)
from core.embedded.errors import EmbeddedServerError
from core.embedded.processes import (
    POLL,
    child_env,
    free_port,
    kill_all,
    log_tail,
    looks_like,
    pid_alive,
    port_is_free,
    process_tree,
    stop_process_tree,
)

__all__ = ["PORT_FILE", "Server"]

logger = logging.getLogger(__package__)

PORT_FILE = "dualcore.port"

_START_ATTEMPTS = 5


class _AddressInUse(Exception):
    """The server exited because its port was taken."""


_RUNNING: set[Server] = set()
_RUNNING_LOCK = threading.Lock()


def _stop_all() -> None:
    """Stop every server still running, so an interrupted run leaves none behind."""
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        try:
            server._halt(server._stop_signal, 5)
        except Exception:
            logger.exception("could not stop %r at exit", server)


atexit.register(_stop_all)


_S = TypeVar("_S", bound="Server")


class Server:
    """Process bookkeeping shared by both servers; subclasses launch and probe the program."""

    _program = ""
    _log_name = "server.log"
    _start_timeout = 10.0
    _stop_signal: int = signal.SIGTERM
    _stop_timeout = 10.0

    def __init__(
        self, data_dir: Path, *, port: int | None, host: str, password: str | None
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self._auto_port = port is None
        self._port = port if port is not None else self._stored_port()
        self._wanted_password = password
        self._password: str | None = None
        self._account: pwd.struct_passwd | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._paused = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} {self.data_dir} {state}>"

    # -- public surface --

    @property
    def port(self) -> int:
        """The TCP port; chosen (free) on first use when none was given."""
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's main process id while running."""
        return self._pid if self.is_running else None

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / self._log_name

    @property
    def password(self) -> str | None:
        """The password the server requires: generated on first start and kept in the data
        directory (`PASSWORD_FILE`, mode 0600), unless one was given. None before any start."""
        return self._password or read_password(self.data_dir)

    @property
    def url(self) -> str:
        """The URL to connect with, password included: hand it to a driver, never print it."""
        password = self.password
        return self._make_url(quote(password, safe="") if password else None)

    @property
    def safe_url(self) -> str:
        """`url` with the password shown as `***`, for people and logs."""
        return self._make_url("***" if self.password else None)

    @property
    def bare_url(self) -> str:
        """The URL without the password (give the driver `password` separately)."""
        return self._make_url(None)

    def _make_url(self, secret: str | None) -> str:
        """The URL with `secret` (URL-encoded already) as its password part."""
        raise NotImplementedError

    def _userinfo(self, user: str, secret: str | None) -> str:
        password = f":{secret}" if secret else ""
        return f"{quote(user, safe='')}{password}@" if user or password else ""

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (also while paused)."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    def restart(self) -> None:
        """Stop and start again, on the same port and data."""
        with self._lock:
            self._halt(self._stop_signal, self._stop_timeout)
            self._start(self._start_timeout)

    def pause(self) -> None:
        """Freeze the server and its children (SIGSTOP); connections hang until `resume()`."""
        with self._lock:
            if self._pid is None or not self.is_running:
                raise EmbeddedServerError(f"{self!r} is not running")
            # The parent first, so that it forks nothing new while its children are stopped.
            kill_all([self._pid], signal.SIGSTOP)
            kill_all(list(process_tree(self._pid)), signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo `pause()` (SIGCONT)."""
        with self._lock:
            if self._pid is not None and self.is_running:
                kill_all(list(process_tree(self._pid)), signal.SIGCONT)
            self._paused = False

    def delete(self) -> None:
        """Stop the server and delete its data directory, wherever its files were placed."""
        with self._lock:
            self._halt(self._stop_signal, self._stop_timeout)
            remove_data(self.data_dir)
            self._password = None

    async def aclose(self) -> None:
        """Stop from async code, in a worker thread; finishes even if the caller is cancelled."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._halt, self._stop_signal, self._stop_timeout)

    def __enter__(self: _S) -> _S:
        self._start(self._start_timeout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._halt(self._stop_signal, self._stop_timeout)

    # -- hooks for subclasses --

    def _prepare(self, deadline: float) -> None:
        """Make the data directory ready (create, initialise)."""

    def _leftover_pid(self) -> int | None:
        """The pid an earlier run recorded in `data_dir`, if any."""
        return None

    def _stdin(self) -> bytes | None:
        """Configuration the server reads from its standard input (kept out of its argv)."""
        return None

    def _adopt(self, deadline: float) -> bool:
        """Take over a server left running in `data_dir` by an earlier run; True if adopted."""
        return False

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _after_start(self, deadline: float) -> None:
        """Work once the server answers (create a database...)."""

    def _after_stop(self) -> None:
        """Tidy up once the server is gone."""

    # -- machinery --

    def _place(self, deadline: float) -> None:
        """Run as the server account: make sure it can reach the data directory, without
        touching the permissions of anything above it."""
        self._account = server_account()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._account is None:
            return
        target = self.data_dir.resolve()
        if can_reach(target.parent, self._account):
            return
        if self.data_dir.is_symlink():
            raise EmbeddedServerError(
                f"{self.data_dir} links to {target}, which the user {self._account.pw_name} "
                f"the server runs as cannot reach"
            )
        # Its files are about to move: a server still working on them must stop first.
        self._stop_leftover(deadline)
        relocate(self.data_dir, self._account)

    def _stop_leftover(self, deadline: float) -> None:
        """Stop a server an earlier run left running in `data_dir`."""
        pid = self._leftover_pid()
        if pid is None or not pid_alive(pid) or not looks_like(pid, self._program, self.data_dir):
            return
        logger.info("stopping the server left running in %s", self.data_dir)
        self._pid = pid
        self._terminate(self._stop_signal, max(deadline - time.monotonic(), 1))

    def _start(self, timeout: float) -> None:
        with self._lock:
            if self.is_running:
                return
            self._forget()
            deadline = time.monotonic() + timeout
            self._prepare(deadline)
            if not self._adopt(deadline):
                self._launch(deadline)
            try:
                self._after_start(deadline)
            except BaseException:
                self._terminate(signal.SIGTERM, 5)
                raise
            self._store_port()
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            logger.info("started %r", self)

    def _halt(self, sig: int, timeout: float) -> None:
        with self._lock:
            if self._pid is not None:
                self._terminate(sig, timeout)
                logger.info("stopped %r", self)
            self._forget()
            self._after_stop()

    def _launch(self, deadline: float) -> None:
        for _attempt in range(_START_ATTEMPTS):
            port = self.port
            if self._auto_port and not port_is_free(self.host, port):
                port = self._port = free_port(self.host)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            # No link followed: the directory may belong to the server account.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(self.log_path, flags, 0o600)
            st = os.fstat(fd)
            # A hard link planted in the account's directory must not get root's file changed.
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                # Logs may quote statements and keys: for the owner only, also when made earlier.
                os.fchmod(fd, 0o600)
                if self._account is not None:
                    # The server reads its data directory back (pg_basebackup copies every
                    # file): a log left to root would make a base backup fail.
                    os.fchown(fd, self._account.pw_uid, self._account.pw_gid)
            with open(fd, "ab") as log:
                self._spawn(port, log)
            try:
                self._wait_ready(deadline, log_offset)
                return
            except _AddressInUse:
                if not self._auto_port:
                    raise EmbeddedServerError(
                        f"{self._program} could not listen on {self.host}:{port}: address in use"
                    ) from None
                logger.info("port %s was taken, trying another", port)
                self._port = free_port(self.host)
        raise EmbeddedServerError(f"{self._program}: no free port after {_START_ATTEMPTS} tries")

    def _spawn(self, port: int, log: IO[bytes]) -> None:
        config = self._stdin()
        try:
            self._proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL if config is None else subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=self.data_dir,
                # Own session: a Ctrl-C meant for the caller does not kill the server before it
                # can be stopped cleanly (the atexit hook does that).
                start_new_session=True,
                **as_account(self._account),
            )
        except PermissionError as exc:
            raise EmbeddedServerError(f"cannot run {self._program}: {exc}") from None
        self._pid = self._proc.pid
        self._paused = False
        if config is not None:
            assert self._proc.stdin is not None
            # A server that exits at once closes its end; the log tells why.
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.write(config)
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = log_tail(self.log_path, log_offset)
                self._forget()
                if "Address already in use" in tail:
                    raise _AddressInUse
                raise EmbeddedServerError(
                    f"{self._program} exited with code {code} during start-up; "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL, 5)
                raise EmbeddedServerError(
                    f"{self._program} did not become ready in time; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path, log_offset)}"
                )
            time.sleep(POLL)

    def _terminate(self, sig: int, timeout: float) -> None:
        """Signal the server, wait, escalate to SIGKILL; leave none of its processes behind."""
        if self._pid is None:
            return
        stop_process_tree(self._pid, self._proc, sig, timeout, self._program)
        self._forget()

    def _forget(self) -> None:
        self._proc = None
        self._pid = None
        self._paused = False
        with _RUNNING_LOCK:
            _RUNNING.discard(self)

    def _stored_port(self) -> int | None:
        try:
            port = int((self.data_dir / PORT_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def _store_port(self) -> None:
        with contextlib.suppress(OSError):
            write_private(self.data_dir / PORT_FILE, f"{self.port}\n", self._account)

    def _settle_password(self) -> bool:
        """Fix the password for this start; True when it differs from the stored one."""
        stored = read_password(self.data_dir)
        self._password = self._wanted_password or stored or new_password()
        return self._password != stored

    def _store_password(self) -> None:
        assert self._password is not None
        write_private(self.data_dir / PASSWORD_FILE, f"{self._password}\n", self._account)
