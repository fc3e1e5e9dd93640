"""Testing helpers: the opt-in pytest plugin (`pytest_plugins = ["core.testing.plugin"]`) and
the pieces it is built from, usable on their own."""

from core.testing.asgi import LifespanError, asgi_lifespan
from core.testing.database import (
    SavepointDatabaseManager,
    create_database,
    drop_database,
    savepoint_session,
)

__all__ = [
    "LifespanError",
    "SavepointDatabaseManager",
    "asgi_lifespan",
    "create_database",
    "drop_database",
    "savepoint_session",
]
