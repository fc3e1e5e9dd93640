"""Who the servers run as and where their files may live: the unprivileged account used when
started by root, permission checks that never loosen anything, private files, passwords.

Started by root, a server runs as SERVER_ACCOUNT, which must be able to reach its data
directory. When a directory above it is private (/root, a 0700 temporary directory, .dualcore),
its files are placed in a directory that account owns, under a root-owned 0711 base, and the
data directory becomes a symbolic link to it; nothing outside the data directory is chmod'ed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.embedded.errors import EmbeddedServerError
from core.embedded.processes import file_lock, pid_alive

__all__ = [
    "PASSWORD_FILE",
    "RELOCATION_ROOT",
    "SERVER_ACCOUNT",
    "as_account",
    "can_reach",
    "check_runnable",
    "chown_tree",
    "new_password",
    "private_dir",
    "read_password",
    "relocate",
    "remove_data",
    "restrict_tree",
    "server_account",
    "write_private",
]

logger = logging.getLogger(__package__)


SERVER_ACCOUNT = "dualcore"
"""The system account the servers run as when started by root (created when missing)."""


@lru_cache(maxsize=1)
def server_account() -> pwd.struct_passwd | None:
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


def can_reach(directory: Path, account: pwd.struct_passwd) -> bool:
    """Whether `account` may search `directory` and every directory above it."""
    try:
        return all(_permits(d.stat(), account, 0o1) for d in (directory, *directory.parents))
    except OSError:
        return False


def check_runnable(binary: Path, account: pwd.struct_passwd | None) -> None:
    """Fail clearly unless `account` (None: ourselves) can run `binary` where it is."""
    if account is None:
        return
    try:
        runnable = can_reach(binary.parent, account) and _permits(binary.stat(), account, 0o1)
    except OSError:
        runnable = False
    if not runnable:
        raise EmbeddedServerError(
            f"{binary} cannot be run by the user `{account.pw_name}` the servers run as when "
            f"started by root (it or a directory above it is private); install the binaries "
            f"where every user can run them, or start the servers as a non-root user"
        )


def chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    """Give `root` and everything under it to `account` (links themselves, not their targets)."""
    os.chown(root, account.pw_uid, account.pw_gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid)


def restrict_tree(root: Path) -> None:
    """Owner-only permissions (0700 directories, 0600 files) on everything under `root`."""
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments running a program as `account` (None: ourselves), umask 077."""
    # umask: whatever the server creates (data, dumps, logs) is for its owner only.
    if account is None:
        return {"umask": 0o077}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "umask": 0o077}


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing and make it 0700; it must be ours."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise EmbeddedServerError(f"{path} belongs to another user (uid {st.st_uid})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str, account: pwd.struct_passwd | None) -> None:
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

RELOCATION_ROOT = Path("/var/tmp")
"""Under it, `dualcore-<uid>` (0711) holds the files of servers whose account cannot reach their
data directory."""
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
            if pid_alive(pid):
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


def relocate(data_dir: Path, account: pwd.struct_passwd) -> None:
    """Move (or create) `data_dir` under the relocation base and leave a link in its place."""
    base = _relocation_base()
    with file_lock(base / ".lock", 30):
        _collect_orphans(base)
        entry = base / _entry_name(data_dir)
        if entry.exists() or entry.is_symlink():
            raise EmbeddedServerError(f"cannot place {data_dir} at {entry}: that path is taken")
        write_private(base / f"{entry.name}{_ORIGIN}", str(data_dir), None)
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


def remove_data(data_dir: Path) -> None:
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


def new_password() -> str:
    """A random password, URL-safe."""
    return secrets.token_urlsafe(24)


def read_password(data_dir: Path) -> str | None:
    """The password kept in `data_dir`, if any."""
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
