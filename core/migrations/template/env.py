"""Alembic environment of this service (created by `dualcore db init`; edit as needed).

Migrations run asynchronously on asyncpg. The database comes from the service's settings
(DATABASE_URL, DATABASE__PASSWORD, or DATABASE_URL=embedded), never from alembic.ini; the models
come from the `dualcore.metadata` option in alembic.ini, with the constraint naming convention
of their MetaData.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.migrations.runtime import lock_migrations, migration_target, run_async, target_metadata

config = context.config
metadata = target_metadata(config)


def do_run_migrations(connection: Connection) -> None:
    """Run the pending migrations on one connection, in one transaction."""
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        lock_migrations(connection)
        context.run_migrations()


async def run_async_migrations() -> None:
    """Connect with the settings' database and migrate."""
    async with migration_target(config) as target:
        connectable = create_async_engine(
            target.url, poolclass=pool.NullPool, connect_args=target.connect_args
        )
        try:
            async with connectable.connect() as connection:
                await connection.run_sync(do_run_migrations)
        finally:
            await connectable.dispose()


def run_migrations_online() -> None:
    """Migrate a live database."""
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller's connection (upgrade_to_head): no second engine, its transaction.
        do_run_migrations(connection)
    else:
        run_async(run_async_migrations)


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (`--sql`)."""
    context.configure(
        dialect_name="postgresql",
        target_metadata=metadata,
        compare_type=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
