"""The migration environment behind the `env.py` that `dualcore db init` generates.

`run_migrations(context)` is the whole environment: which settings and metadata to use, how to
reach the database (embedded servers included), online and offline (`--sql`) runs, and how to
run async code from Alembic's synchronous commands. The pieces are public for an env.py that
needs to do more.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import Settings
from core.migrations.config import METADATA_OPTION, load_metadata

__all__ = [
    "MIGRATION_LOCK_KEY",
    "MigrationTarget",
    "lock_migrations",
    "migration_target",
    "run_async",
    "run_migrations",
    "settings_for",
    "target_metadata",
]

MIGRATION_LOCK_KEY = zlib.crc32(b"dualcore.migrations")
"""The advisory lock key that serialises migration runs on one database."""


def settings_for(config: Config) -> Settings:
    """The settings given by the caller (`config.attributes["settings"]`), else read from the
    environment."""
    settings = config.attributes.get("settings")
    if settings is None:
        from_env: Any = Settings  # reads the environment and .env
        settings = config.attributes["settings"] = from_env()
    if not isinstance(settings, Settings):
        raise TypeError("config.attributes['settings'] must be a core.config.Settings")
    return settings


def target_metadata(config: Config) -> MetaData | None:
    """The metadata to migrate to: `config.attributes["target_metadata"]` if set, else the
    object named by the `dualcore.metadata` option, else None (no autogenerate)."""
    given = config.attributes.get("target_metadata")
    if given is not None:
        if not isinstance(given, MetaData):
            raise TypeError("config.attributes['target_metadata'] must be a MetaData")
        return given
    ref = config.get_main_option(METADATA_OPTION)
    return load_metadata(ref) if ref else None


@dataclass(frozen=True)
class MigrationTarget:
    """Where migrations connect: the URL (password included, masked in its repr) and asyncpg
    connect arguments."""

    url: URL
    connect_args: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def migration_target(config: Config) -> AsyncIterator[MigrationTarget]:
    """The database to migrate, from the settings; with `DATABASE_URL=embedded` the embedded
    server is started for the duration of the block.

    No statement timeout applies: a long index build must not be cut off halfway.
    """
    from core.database import DatabaseManager

    settings = settings_for(config)
    db = DatabaseManager(settings)
    try:
        if settings.database.is_embedded:
            await db.start()
        cfg = settings.database
        connect_args: dict[str, Any] = {
            "timeout": cfg.connect_timeout,
            "server_settings": {"application_name": f"{settings.app.name}-migrations"[:63]},
            **cfg.secret_connect_args(),
        }
        if cfg.pgbouncer:
            connect_args["statement_cache_size"] = 0
            connect_args["prepared_statement_cache_size"] = 0
        yield MigrationTarget(cfg.sqlalchemy_url(db.url), connect_args)
    finally:
        await db.close()


def lock_migrations(connection: Connection) -> None:
    """Wait for other migration runs on this database, holding a lock until this transaction
    ends (several app instances may start, and migrate, at the same time)."""
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")


def run_async(fn: Callable[[], Awaitable[None]]) -> None:
    """Run `fn()` to completion from synchronous code.

    Alembic's commands are synchronous. When an event loop already runs in this thread (an
    async test, a notebook), `fn` runs on a fresh loop in a worker thread, and this call blocks
    until it is done; async callers should prefer `upgrade_to_head()`.
    """

    async def main() -> None:
        await fn()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=worker, name="dualcore-migrations")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def run_migrations(context: Any, **configure: Any) -> None:
    """Run Alembic's current command (`context` is `alembic.context`): online on the caller's
    connection (`upgrade_to_head`) or on a connection made from the settings, or offline,
    printing SQL. Keyword arguments go to `context.configure` (e.g. `include_object=`)."""
    config = context.config
    metadata = target_metadata(config)
    options: dict[str, Any] = {"target_metadata": metadata, "compare_type": True, **configure}

    def migrate(connection: Connection) -> None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            lock_migrations(connection)
            context.run_migrations()

    async def migrate_from_settings() -> None:
        async with migration_target(config) as target:
            engine = create_async_engine(
                target.url, poolclass=pool.NullPool, connect_args=target.connect_args
            )
            try:
                async with engine.connect() as connection:
                    await connection.run_sync(migrate)
            finally:
                await engine.dispose()

    if context.is_offline_mode():
        context.configure(
            dialect_name="postgresql",
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()
    elif (connection := config.attributes.get("connection")) is not None:
        # The caller's connection (upgrade_to_head): no second engine, its transaction.
        migrate(connection)
    else:
        run_async(migrate_from_settings)
