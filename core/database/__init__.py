"""The PostgreSQL side: the session manager (`manager`), read replicas (`replicas`) and the
connection hygiene every engine gets (`connection`)."""

from core.database.manager import (
    COMMIT_FAILURE,
    DatabaseManager,
    ReadOnlySession,
    ReadOnlySessionError,
    db_manager,
)

__all__ = [
    "COMMIT_FAILURE",
    "DatabaseManager",
    "ReadOnlySession",
    "ReadOnlySessionError",
    "db_manager",
]
