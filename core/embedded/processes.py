"""Processes, ports and locks: the POSIX plumbing under the servers' lifecycle."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from core.embedded.errors import EmbeddedServerError

__all__ = [
    "POLL",
    "child_env",
    "file_lock",
    "free_port",
    "kill_all",
    "log_tail",
    "looks_like",
    "pid_alive",
    "port_is_free",
    "process_tree",
    "still_alive",
    "stop_process_tree",
    "url_host",
]

logger = logging.getLogger(__package__)

POLL = 0.05
"""Seconds between two looks at something we wait for."""

_LOG_TAIL_LINES = 25


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rpartition(b")")[2].split()[0].decode()


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
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


def process_tree(root: int) -> dict[int, str]:
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


def still_alive(pids: Mapping[int, str]) -> list[int]:
    """Those of `pids` that still run as the same process (not exited, not reused)."""
    table = _process_table()
    return [
        pid
        for pid, started in pids.items()
        if pid in table and table[pid][1] != "Z" and table[pid][2] == started
    ]


def kill_all(pids: Sequence[int], sig: int) -> None:
    """Send `sig` to each of `pids` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def stop_process_tree(
    pid: int, proc: subprocess.Popen[bytes] | None, sig: int, timeout: float, program: str
) -> None:
    """Signal `pid` (our child `proc`, if it is one), wait, escalate to SIGKILL; leave none of
    its processes behind."""
    # PostgreSQL's children leave the postmaster's process group, so track them by parent.
    tree = process_tree(pid)
    kill_all([pid], sig)
    # A paused server handles nothing, not even the request to stop, until continued.
    kill_all(list(tree), signal.SIGCONT)
    if not _wait_gone(pid, proc, timeout):
        logger.warning("%s did not stop within %.0fs; killing it", program, timeout)
        kill_all([pid, *tree], signal.SIGKILL)
        _wait_gone(pid, proc, 5)
    deadline = time.monotonic() + 5
    while (left := still_alive(tree)) and time.monotonic() < deadline:
        kill_all(left, signal.SIGKILL)
        time.sleep(POLL)


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


def looks_like(pid: int, program: str, data_dir: Path) -> bool:
    """Whether live `pid` is `program` working in `data_dir` (guards against pid reuse)."""
    cwd = _cwd_of(pid)
    if cwd is not None:
        return cwd == data_dir.resolve()
    cmdline = _cmdline_of(pid)
    return cmdline is None or program in cmdline


def log_tail(path: Path, start: int = 0) -> str:
    """The last lines of the log at `path` written after offset `start`."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return "(no log)"
    lines = data.decode(errors="replace").strip().splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(log is empty)"


def child_env() -> dict[str, str]:
    """The environment for server programs: no PG* settings, English messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # English messages: start failures are recognised by their text.
    env.update(LC_ALL="C", LANG="C")
    return env


# --- ports -----------------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host`:`port`."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        # As the servers do, so that TIME_WAIT leftovers of a previous run do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def url_host(host: str) -> str:
    """`host` as it goes in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
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
                time.sleep(POLL)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
