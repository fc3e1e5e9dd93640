"""Alembic environment of this service (created by `dualcore db init`).

Migrations run asynchronously on asyncpg. The database comes from the service's settings
(DATABASE_URL, DATABASE__PASSWORD, or DATABASE_URL=embedded), never from alembic.ini; the models
come from the `dualcore.metadata` option in alembic.ini, with the constraint naming convention
of their MetaData. To customise, pass `context.configure` options to `run_migrations`
(e.g. `include_object=...`), or build your own from `core.migrations.runtime`.
"""

from alembic import context

from core.migrations.runtime import run_migrations

run_migrations(context)
