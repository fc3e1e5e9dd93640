"""The migration commands as functions: Alembic's commands, returning data instead of printing.

The synchronous functions suit scripts and the command line; `upgrade_to_head()` is for code
that already runs in an event loop (application start-up) and reuses the manager's engine.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import Connection

from core.migrations.config import MigrationError, load_config, make_config

if TYPE_CHECKING:
    from core.database import DatabaseManager

__all__ = [
    "check",
    "current",
    "downgrade",
    "history",
    "revision",
    "upgrade",
    "upgrade_to_head",
]


def upgrade(cfg: Config, rev: str = "head", *, sql: bool = False) -> None:
    """Apply migrations up to `rev` (with `sql=True`, print the SQL instead)."""
    command.upgrade(cfg, rev, sql=sql)


def downgrade(cfg: Config, rev: str, *, sql: bool = False) -> None:
    """Revert migrations down to `rev` (`base` reverts all)."""
    command.downgrade(cfg, rev, sql=sql)


def revision(
    cfg: Config, message: str, autogenerate: bool = True, *, rev_id: str | None = None
) -> Script:
    """Write a new revision file; with `autogenerate`, filled with the difference between the
    models' metadata and the database. Returns the script (its file is `script.path`)."""
    result = command.revision(cfg, message=message, autogenerate=autogenerate, rev_id=rev_id)
    scripts = result if isinstance(result, list) else [result]
    written = [s for s in scripts if s is not None]
    if len(written) != 1:
        raise MigrationError(f"expected one revision file, got {len(written)}")
    return written[0]


def current(cfg: Config) -> list[str]:
    """The revision ids the database is at (empty before the first upgrade)."""
    script = ScriptDirectory.from_config(cfg)
    heads: list[str] = []

    def collect(rev: object, context: MigrationContext) -> list[object]:
        heads.extend(context.get_current_heads())
        return []

    with EnvironmentContext(cfg, script, fn=collect, dont_mutate=True):
        script.run_env()
    return heads


def history(cfg: Config) -> list[Script]:
    """All revisions, newest first (no database needed)."""
    return list(ScriptDirectory.from_config(cfg).walk_revisions())


def check(cfg: Config) -> None:
    """Raise `alembic.util.CommandError` if the models differ from the migrated database."""
    command.check(cfg)


def _upgrade_on(connection: Connection, cfg: Config, rev: str) -> None:
    cfg.attributes["connection"] = connection
    try:
        command.upgrade(cfg, rev)
    finally:
        cfg.attributes.pop("connection", None)


def _startup_config(
    script_location: str | os.PathLike[str] | None,
    config_file: str | os.PathLike[str] | None,
    settings: object,
) -> Config:
    if script_location is None:
        return load_config(config_file, settings=settings)
    if not Path(script_location).is_dir():
        raise MigrationError(f"no migrations folder at {Path(script_location).absolute()}")
    return make_config(script_location, settings=settings)


async def upgrade_to_head(
    db: DatabaseManager,
    script_location: str | os.PathLike[str] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
) -> None:
    """Apply all pending migrations on `db`'s own engine (embedded servers included).

    Scripts come from `script_location`, else from the `alembic.ini` at `config_file` (default:
    in the current directory). Runs in one transaction under an advisory lock, so several
    instances starting at once migrate once. Migration statements run with the manager's
    `statement_timeout`; run long migrations with `dualcore db upgrade` instead. The scripts'
    env.py must honour `config.attributes["connection"]`, as the one `dualcore db init` writes.
    """
    cfg = _startup_config(script_location, config_file, db.settings)
    # Alembic keeps the running migration context in module globals: one run per process at a
    # time (the advisory lock in env.py serialises processes).
    async with _process_lock(), db.engine.begin() as conn:
        await conn.run_sync(_upgrade_on, cfg, "head")


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _process_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock
