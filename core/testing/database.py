"""Database pieces of the test fixtures: a manager whose sessions live inside one test's
transaction, and throw-away databases."""

from __future__ import annotations

import uuid

from sqlalchemy import event, pool, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from core.config import Settings
from core.database import DatabaseManager, ReadOnlySession

__all__ = [
    "SavepointDatabaseManager",
    "SavepointSession",
    "create_database",
    "drop_database",
    "savepoint_session",
]


# Run by a commit that only releases a savepoint: PostgreSQL checks deferred constraints at
# the real COMMIT, so without this a duplicate under a deferred unique constraint would pass.
_CHECK_DEFERRED = "SET CONSTRAINTS ALL IMMEDIATE"
# ...and afterwards the constraints declared INITIALLY DEFERRED are deferred again.
_RESTORE_DEFERRED = """
DO $$
DECLARE names text;
BEGIN
    SELECT string_agg(DISTINCT format('%I.%I', n.nspname, c.conname), ', ') INTO names
    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
    WHERE c.condeferred;
    IF names IS NOT NULL THEN
        EXECUTE 'SET CONSTRAINTS ' || names || ' DEFERRED';
    END IF;
END $$
"""


class SavepointSession(Session):
    """A session whose commit, when it only releases a savepoint, still checks deferred
    constraints, as the COMMIT it stands in for would."""


@event.listens_for(SavepointSession, "before_commit")
def _check_deferred_constraints(session: Session) -> None:
    session.connection().exec_driver_sql(_CHECK_DEFERRED)


@event.listens_for(SavepointSession, "after_commit")
def _restore_deferred_constraints(session: Session) -> None:
    bind = session.bind
    if isinstance(bind, Connection) and bind.in_transaction():
        bind.exec_driver_sql(_RESTORE_DEFERRED)


def savepoint_session(connection: AsyncConnection) -> AsyncSession:
    """A session on `connection` whose commits and rollbacks only release or roll back a
    SAVEPOINT: the connection's own transaction stays open, and whoever began it decides."""
    return AsyncSession(
        bind=connection,
        join_transaction_mode="create_savepoint",
        expire_on_commit=False,
        sync_session_class=SavepointSession,
    )


class SavepointDatabaseManager(DatabaseManager):
    """A `DatabaseManager` whose sessions all run inside one open transaction on `connection`.

    Code under test uses it like any manager (`get_session()` commits, `read_only=True`
    refuses writes), but a commit only releases a savepoint (checking deferred constraints as
    a real commit would): when the test rolls the connection's transaction back, nothing the
    code did remains. `start()` and `close()` leave
    `parent`, which owns the engines, alone. Engines (`engine`, `read_engine`) are the parent's
    and work outside the test's transaction.

    Sessions share one connection: requests that use the database must not run concurrently.
    """

    def __init__(
        self,
        parent: DatabaseManager,
        connection: AsyncConnection,
        *,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(settings if settings is not None else parent.settings)
        self._parent = parent
        self._connection = connection
        self._rw_savepoint = async_sessionmaker(
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            sync_session_class=SavepointSession,
        )
        self._ro_savepoint = async_sessionmaker(
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            autoflush=False,
            sync_session_class=ReadOnlySession,
        )

    @property
    def connection(self) -> AsyncConnection:
        """The test's connection; its transaction is rolled back when the test ends."""
        return self._connection

    @property
    def url(self) -> str:
        """The parent's URL (embedded servers included), without its password."""
        return self._parent.url

    async def start(self) -> None:
        """Nothing to start: the parent is running."""

    async def close(self) -> None:
        """Nothing to dispose: the connection belongs to the test, the engines to the parent."""

    @property
    def engine(self) -> AsyncEngine:
        """The parent's read-write engine (outside the test's transaction)."""
        return self._parent.engine

    @property
    def read_engine(self) -> AsyncEngine:
        """The parent's read-only engine (outside the test's transaction)."""
        return self._parent.read_engine

    def session_factory(self, *, read_only: bool = False) -> async_sessionmaker[AsyncSession]:
        """Sessions bound to the test's connection, in savepoint mode."""
        return self._ro_savepoint if read_only else self._rw_savepoint

    def __repr__(self) -> str:
        return f"SavepointDatabaseManager(url={self.safe_url!r})"


def _admin_engine(url: URL) -> AsyncEngine:
    return create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(server_url: str | URL, *, prefix: str | None = None) -> URL:
    """Create an empty database next to the one `server_url` names; return its URL (password
    kept, asyncpg driver). The name is `<prefix or that database>_<random>`."""
    url = make_url(server_url).set(drivername="postgresql+asyncpg")
    base = (prefix or url.database or "postgres")[:40]
    name = f"{base}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {_quote(name)}"))
    finally:
        await engine.dispose()
    return url.set(database=name)


async def drop_database(database_url: str | URL, *, via: str | URL | None = None) -> None:
    """Drop the database `database_url` names, disconnecting its sessions; connects to the
    database of `via` (default `postgres`) on the same server to do so."""
    url = make_url(database_url).set(drivername="postgresql+asyncpg")
    name = url.database
    if not name:
        raise ValueError("the URL names no database")
    admin = make_url(via) if via is not None else url.set(database="postgres")
    engine = _admin_engine(admin.set(drivername="postgresql+asyncpg"))
    try:
        async with engine.connect() as conn:
            try:
                await conn.execute(text(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)"))
            except ProgrammingError:  # PostgreSQL 12 and older have no FORCE
                await conn.execute(text(f"DROP DATABASE IF EXISTS {_quote(name)}"))
    finally:
        await engine.dispose()
