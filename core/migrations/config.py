"""Alembic configuration for dualcore services: where the scripts are and which metadata to diff.

The database URL is never part of this configuration: the environment script reads it from the
dualcore settings at run time, so a password never lands in `alembic.ini`.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import MetaData

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "METADATA_OPTION",
    "MigrationError",
    "init",
    "load_config",
    "load_metadata",
    "make_config",
    "parse_metadata_ref",
]

DEFAULT_CONFIG_FILE = "alembic.ini"
METADATA_OPTION = "dualcore.metadata"
"""The `[alembic]` option naming the models' metadata, as `package.module:attribute.path`."""

TEMPLATE_DIR = Path(__file__).with_name("template")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_REF = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


class MigrationError(RuntimeError):
    """A migration command could not run; the message says what to fix."""


def parse_metadata_ref(ref: str) -> tuple[str, list[str]]:
    """Split `package.module:Base.metadata` into the module name and the attribute path."""
    ref = ref.strip()
    if not _REF.match(ref):
        raise ValueError(
            f"metadata reference must look like 'package.module:Base.metadata', got {ref!r}"
        )
    module, _, attrs = ref.partition(":")
    return module, attrs.split(".")


def load_metadata(ref: str) -> MetaData:
    """Import the module named by `ref` and return the `MetaData` it points at."""
    try:
        module_name, attrs = parse_metadata_ref(ref)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise MigrationError(
            f"cannot import {module_name!r} for the metadata {ref!r} ({type(exc).__name__}: "
            f"{exc}); run from the project root or fix `{METADATA_OPTION}` in alembic.ini"
        ) from exc
    for attr in attrs:
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise MigrationError(f"{ref!r}: {module_name} has no attribute path {attr!r}") from None
    if not isinstance(target, MetaData):
        raise MigrationError(f"{ref!r} is a {type(target).__name__}, not a SQLAlchemy MetaData")
    return target


def _ini_value(value: str) -> str:
    # Config options go through ConfigParser interpolation, where "%" is special.
    return value.replace("%", "%%")


class _CurrentStdout(io.TextIOBase):
    """Writes to whatever `sys.stdout` is at the time of writing. Alembic's default stream is
    the `sys.stdout` of its import, which redirection (and a test runner's capture) leave
    behind."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(sys.stdout, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


_CURRENT_STDOUT: Any = _CurrentStdout()


def make_config(
    script_location: str | os.PathLike[str],
    metadata_ref: str | None = None,
    *,
    settings: Any = None,
    metadata: MetaData | None = None,
) -> Config:
    """An Alembic `Config` without a file: scripts in `script_location`, models from
    `metadata_ref` (or the `metadata` object itself), database from `settings` (default: the
    environment's `Settings()`)."""
    cfg = Config(stdout=_CURRENT_STDOUT)
    cfg.set_main_option("script_location", _ini_value(str(script_location)))
    cfg.set_main_option("path_separator", "os")
    if metadata_ref is not None:
        parse_metadata_ref(metadata_ref)
        cfg.set_main_option(METADATA_OPTION, _ini_value(metadata_ref))
    if settings is not None:
        cfg.attributes["settings"] = settings
    if metadata is not None:
        cfg.attributes["target_metadata"] = metadata
    return cfg


def load_config(
    config_file: str | os.PathLike[str] | None = None, *, settings: Any = None
) -> Config:
    """The Alembic `Config` read from `config_file` (default: `alembic.ini` in the current
    directory)."""
    path = Path(config_file if config_file is not None else DEFAULT_CONFIG_FILE)
    if not path.is_file():
        raise MigrationError(
            f"no Alembic configuration at {path.absolute()}: run `dualcore db init` first, or "
            "pass --config PATH"
        )
    cfg = Config(str(path), stdout=_CURRENT_STDOUT)
    if not cfg.get_main_option("script_location"):
        raise MigrationError(f"{path} has no `script_location` in its [alembic] section")
    if settings is not None:
        cfg.attributes["settings"] = settings
    return cfg


_INI_TEMPLATE = """\
# Alembic configuration for this service, written by `dualcore db init`.
#
# The database URL is not configured here: migrations connect with the service's own settings
# (DATABASE_URL or DATABASE__URL, DATABASE__PASSWORD, or DATABASE_URL=embedded), so no password
# is ever written to this file.

[alembic]
# Where env.py, script.py.mako and versions/ live (%(here)s is this file's directory).
script_location = {script_location}

# The SQLAlchemy MetaData to compare against for `dualcore db revision --autogenerate`.
{metadata_option} = {metadata}

# Make the project next to this file importable, wherever the commands run from.
prepend_sys_path = %(here)s
path_separator = os

# Revision files sort by date: 20250101_1200_ab12cd34ef56_add_users.py
file_template = %%(year)d%%(month).2d%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s
"""


def init(
    directory: str | os.PathLike[str] = "migrations",
    metadata: str = "app.models:Base.metadata",
    *,
    config_file: str | os.PathLike[str] = DEFAULT_CONFIG_FILE,
) -> Path:
    """Create a migrations folder (env.py, script.py.mako, versions/) and an `alembic.ini`
    pointing at it and at `metadata`; return the path of the ini file.

    Refuses to overwrite: the folder must be missing or empty and the ini file must not exist.
    """
    try:
        parse_metadata_ref(metadata)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    target = Path(directory).absolute()
    ini = Path(config_file).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MigrationError(f"{target} already exists and is not an empty directory")
    if ini.exists():
        raise MigrationError(
            f"{ini} already exists: add `script_location = {target}` and "
            f"`{METADATA_OPTION} = {metadata}` to its [alembic] section instead"
        )
    (target / "versions").mkdir(parents=True, exist_ok=True)
    for name in ("env.py", "script.py.mako"):
        shutil.copyfile(TEMPLATE_DIR / name, target / name)
    try:
        relative = target.relative_to(ini.parent).as_posix()
        location = "%(here)s" if relative == "." else f"%(here)s/{_ini_value(relative)}"
    except ValueError:
        location = _ini_value(str(target))
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(
        _INI_TEMPLATE.format(
            script_location=location, metadata_option=METADATA_OPTION, metadata=_ini_value(metadata)
        ),
        encoding="utf-8",
    )
    return ini
