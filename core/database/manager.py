"""PostgreSQL through SQLAlchemy 2 async on asyncpg: engines, sessions, ping and shutdown.

Two pools share one configuration. Read-write sessions use ordinary transactions and commit on a
clean exit. Read-only sessions use an autocommit pool whose connections are opened with
`default_transaction_read_only=on`: a primary-key read costs one round trip (no BEGIN/COMMIT), and
a write is refused by PostgreSQL itself as well as by the session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.database.connection import DATABASE, harden_engine, shielded_connect
from core.database.release import release_connection, release_session
from core.database.replicas import Replica, ReplicaSet, is_connection_failure
from core.errors import ResourceClosedError
from core.resilience import CircuitBreaker, is_serialization_failure, is_transient, origin_of
from core.urls import redact_url

__all__ = [
    "COMMIT_FAILURE",
    "DatabaseManager",
    "ReadOnlySession",
    "ReadOnlySessionError",
    "db_manager",
]

log = logging.getLogger("dualcore.database")

T = TypeVar("T")


class ReadOnlySessionError(RuntimeError):
    """A read-only session was asked to write."""


class ReadOnlySession(Session):
    """The sync session class behind read-only sessions: a flush with pending changes raises
    `ReadOnlySessionError` instead of writing."""

    def flush(self, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            raise ReadOnlySessionError("this session is read-only; use get_session() for writes")
        super().flush(objects)


class DatabaseManager:
    """Owns the engines and session factories for one PostgreSQL database.

    Build it with settings (or let it read `get_settings()` on first use), enter it or call
    `start()`, then use `get_session()`. `close()` disposes everything; a closed manager can be
    started again.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._engine: AsyncEngine | None = None
        self._read_engine: AsyncEngine | None = None
        self._rw_factory: async_sessionmaker[AsyncSession] | None = None
        self._ro_factory: async_sessionmaker[AsyncSession] | None = None
        self._replicas: ReplicaSet | None = None
        self._embedded: Any = None
        self._closed = False
        self._url_override: str | None = None
        self._breaker: CircuitBreaker | None = None

    # --- configuration ---------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings given, else the process-wide `get_settings()`."""
        # Not stored: the global instances follow `get_settings.cache_clear()` between runs.
        return self._settings if self._settings is not None else get_settings()

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return self._url_override or self.settings.database.url

    @property
    def safe_url(self) -> str:
        """The URL safe to show to people and logs."""
        return redact_url(self.url)

    def _engine_kwargs(self, read_only: bool, replica: int | None = None) -> dict[str, Any]:
        db = self.settings.database
        server_settings = {"application_name": db.application_name or self.settings.app.name}
        # PgBouncer refuses startup parameters it does not track (only application_name of
        # these): behind it, statement_timeout and search_path belong on the role
        # (ALTER ROLE ... SET), and a read-only session is enforced by the session alone.
        if db.statement_timeout and not db.pgbouncer:
            server_settings["statement_timeout"] = str(int(db.statement_timeout * 1000))
        if db.search_path and not db.pgbouncer:
            server_settings["search_path"] = db.search_path
        if read_only and not db.pgbouncer:
            server_settings["default_transaction_read_only"] = "on"
        connect_args: dict[str, Any] = {
            "server_settings": server_settings,
            "timeout": db.connect_timeout,
            "command_timeout": db.effective_command_timeout,
            # Read by SQLAlchemy's asyncpg dialect in place of asyncpg.connect.
            "async_creator_fn": shielded_connect,
            # Secret query options (sslpassword) reach asyncpg here, never through the URL.
            **db.secret_connect_args(replica),
        }
        if db.pgbouncer:
            # Transaction pooling hands each transaction to any server connection, so a named
            # prepared statement may not exist where the next query runs. With both caches off,
            # asyncpg sends every statement unnamed and re-parsed with its Bind/Execute in one
            # message. Do not add a `prepared_statement_name_func`: a name makes the statement
            # named again, and PgBouncer may run its Bind on another server connection.
            connect_args["statement_cache_size"] = 0
            connect_args["prepared_statement_cache_size"] = 0
        kwargs: dict[str, Any] = {
            "pool_size": db.pool_size,
            "max_overflow": db.max_overflow,
            "pool_timeout": db.pool_timeout,
            "pool_recycle": db.pool_recycle,
            "pool_pre_ping": db.pool_pre_ping,
            "echo": db.echo,
            "connect_args": connect_args,
        }
        if read_only:
            kwargs["isolation_level"] = "AUTOCOMMIT"
        return kwargs

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding the primary; its state feeds health and metrics.

        It counts only failures of this manager's own connect, execute and commit that say the
        server is unreachable: never an error raised by application code inside a session, nor
        a serialization failure or deadlock (the server is fine; the transaction lost a race).
        """
        if self._breaker is None:
            self._breaker = CircuitBreaker.from_settings(
                "database", self.settings.resilience, is_failure=_is_database_failure
            )
        return self._breaker

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start an embedded server if configured, and build the engines. Idempotent."""
        self._closed = False
        if self._engine is not None:
            return
        if self.settings.database.is_embedded:
            from core.embedded import start_embedded_postgres

            self._embedded, self._url_override = await start_embedded_postgres(self.settings)
        self._build()

    def _build(self) -> None:
        if self._closed:
            raise ResourceClosedError("database")
        if self.url == "embedded":
            raise RuntimeError("DATABASE_URL=embedded: call `await manager.start()` first")
        # Both engines reach the primary; they differ in isolation, pool and session options.
        url = self.settings.database.sqlalchemy_url(self.url)
        self._engine = harden_engine(create_async_engine(url, **self._engine_kwargs(False)))
        self._read_engine = harden_engine(create_async_engine(url, **self._engine_kwargs(True)))
        self._rw_factory = async_sessionmaker(self._engine, expire_on_commit=False)
        self._ro_factory = async_sessionmaker(
            self._read_engine,
            expire_on_commit=False,
            autoflush=False,
            sync_session_class=ReadOnlySession,
        )
        self._replicas = self._build_replicas()

    def _build_replicas(self) -> ReplicaSet | None:
        db = self.settings.database
        if not db.replica_urls:
            return None
        replicas = [
            Replica(
                f"replica-{i}",
                harden_engine(
                    create_async_engine(
                        db.replica_sqlalchemy_url(i), **self._engine_kwargs(True, replica=i)
                    )
                ),
                redact_url(url),
            )
            for i, url in enumerate(db.replica_urls)
        ]
        return ReplicaSet(replicas, cooloff=db.replica_cooloff)

    async def close(self) -> None:
        """Dispose all pools (and stop an embedded server this manager started).

        Connections still checked out (requests in flight) first get up to half the shutdown
        timeout to come back: disposing a pool does not close them, so they would stay open.
        """
        engines = [e for e in (self._read_engine, self._engine) if e is not None]
        drained_by = time.monotonic() + self.settings.app.shutdown_timeout / 2
        # Polled: a pool has no awaitable "all checked in" signal.
        while any(_checked_out(e) for e in engines) and time.monotonic() < drained_by:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._closed = True
        replicas, self._replicas = self._replicas, None
        self._engine = self._read_engine = None
        self._rw_factory = self._ro_factory = None
        errors: list[BaseException] = []
        if replicas is not None:
            try:
                await replicas.dispose()
            except Exception as exc:
                errors.append(exc)
        for engine in engines:
            try:
                await engine.dispose()
            except Exception as exc:
                errors.append(exc)
        if self._embedded is not None:
            embedded, self._embedded, self._url_override = self._embedded, None, None
            await embedded.aclose()
        if errors:
            raise errors[0]

    async def __aenter__(self) -> DatabaseManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        """The read-write engine."""
        if self._engine is None:
            self._build()
        assert self._engine is not None
        return self._engine

    @property
    def read_engine(self) -> AsyncEngine:
        """The autocommit, read-only engine used by `get_session(read_only=True)`."""
        if self._read_engine is None:
            self._build()
        assert self._read_engine is not None
        return self._read_engine

    @property
    def replicas(self) -> ReplicaSet | None:
        """The read replicas (None when none are configured)."""
        if self._engine is None:
            self._build()
        return self._replicas

    def engines(self) -> list[tuple[str, AsyncEngine]]:
        """The engines built so far, named for metrics: `primary`, `read` and each replica."""
        if self._engine is None or self._read_engine is None:
            return []
        named = [("primary", self._engine), ("read", self._read_engine)]
        return named + [(r.name, r.engine) for r in self._replicas or ()]

    def replica_checks(self) -> list[tuple[str, Callable[[], Awaitable[float]]]]:
        """One health probe per configured replica, named `postgresql-replica-<n>`.

        Probes look the replica up when they run, so they may be registered before `start()`.
        """
        count = len(self.settings.database.replica_urls)
        return [
            (f"postgresql-replica-{i}", functools.partial(self._ping_replica, i))
            for i in range(count)
        ]

    async def _ping_replica(self, index: int) -> float:
        replicas = self.replicas
        if replicas is None:
            raise RuntimeError("no replicas are configured")
        return await replicas.ping(list(replicas)[index])

    # --- sessions --------------------------------------------------------------------------

    def session_factory(self, *, read_only: bool = False) -> async_sessionmaker[AsyncSession]:
        """The sessionmaker behind `get_session()`, for code that manages sessions itself.

        Its read-only sessions use the primary; only `get_session(read_only=True)` picks a
        replica.
        """
        if self._rw_factory is None:
            self._build()
        factory = self._ro_factory if read_only else self._rw_factory
        assert factory is not None
        return factory

    @asynccontextmanager
    async def get_session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """A session that commits on a clean exit, rolls back on error and always closes.

        With `read_only=True` no transaction is opened and nothing is committed: each statement
        runs on its own, and any attempt to write raises `ReadOnlySessionError` (or is refused by
        PostgreSQL). Cleanup completes even if the task is cancelled, so no connection is left
        checked out.

        With replicas configured, a read-only session runs on the next replica that accepts a
        connection (round-robin), else on the primary. Read-write sessions always use the
        primary, so reads inside a unit of work that writes see its own writes.
        """
        factory = self.session_factory(read_only=read_only)
        picked = await self._replicas.connect() if read_only and self._replicas else None
        if picked is not None:
            async with self._replica_session(factory, *picked) as session:
                yield session
            return
        # While the breaker is open, fail fast (answered 503) instead of queueing on a pool
        # whose server is down. Only the engine's own connection-level failures count against
        # it (see `_is_database_failure`), including a commit that the request layer ran.
        breaker = self.breaker
        permit = breaker.admit()
        if permit is None:
            raise breaker._rejection()
        failure: BaseException | None = None
        session = factory()
        try:
            yield session
            if not read_only and _has_work(session):
                await session.commit()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                await release_session(session)
            finally:
                failure = session.info.pop(COMMIT_FAILURE, None) or failure
                breaker.settle(permit, failure)

    @asynccontextmanager
    async def _replica_session(
        self,
        factory: async_sessionmaker[AsyncSession],
        conn: AsyncConnection,
        replica: Replica,
    ) -> AsyncIterator[AsyncSession]:
        session = factory(bind=conn)
        try:
            yield session
        except Exception as exc:
            if self._replicas is not None and is_connection_failure(exc):
                self._replicas.mark_down(replica)
            raise
        finally:
            await release_session(session, conn)

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A SQLAlchemy Core connection for hot reads, returned to its pool on exit.

        The fast path under `get_session(read_only=True)`: no ORM session, identity map or
        flush. It comes from the same autocommit pool opened with
        `default_transaction_read_only=on` (each statement runs on its own: one round trip, and
        PostgreSQL refuses writes; behind PgBouncer, which drops that parameter, nothing does),
        or from the next replica that accepts a connection. Cleanup completes even if the task
        is cancelled.
        """
        if self._read_engine is None:
            self._build()
        picked = await self._replicas.connect() if self._replicas else None
        if picked is not None:
            conn, replica = picked
            try:
                yield conn
            except Exception as exc:
                if self._replicas is not None and is_connection_failure(exc):
                    self._replicas.mark_down(replica)
                raise
            finally:
                await release_connection(conn)
            return
        breaker = self.breaker
        permit = breaker.admit()
        if permit is None:
            raise breaker._rejection()
        failure: BaseException | None = None
        try:
            assert self._read_engine is not None
            conn = await self._read_engine.connect()
            try:
                yield conn
            finally:
                await release_connection(conn)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            breaker.settle(permit, failure)

    async def run_in_transaction(
        self,
        fn: Callable[[AsyncSession], Awaitable[T]],
        *,
        attempts: int | None = None,
    ) -> T:
        """Run `fn(session)` in one transaction, re-running the whole unit of work on a
        serialization failure or deadlock (never a partial one)."""
        from core.resilience import RetryPolicy, is_serialization_failure, retry

        overrides: dict[str, Any] = {"retry_on": is_serialization_failure}
        if attempts is not None:
            overrides["attempts"] = attempts
        policy = RetryPolicy.from_settings(self.settings.resilience, **overrides)

        async def unit() -> T:
            async with self.get_session() as session:
                return await fn(session)

        return await retry(unit, policy)

    # --- checks ----------------------------------------------------------------------------

    async def ping(self) -> float:
        """Run `SELECT 1` on the server; return the round-trip time in seconds."""
        start = time.perf_counter()
        async with self.read_engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return time.perf_counter() - start

    async def server_version(self) -> str:
        """The server's version string (`SHOW server_version`)."""
        async with self.read_engine.connect() as conn:
            return str((await conn.execute(text("SHOW server_version"))).scalar_one())

    async def create_all(self, metadata: MetaData | None = None) -> None:
        """Create all tables of `metadata` (default `Base.metadata`). Development only:
        other environments use migrations."""
        if self.settings.app.environment != "development":
            raise RuntimeError(
                "create_all() runs only in the development environment; "
                "use migrations (dualcore db upgrade) elsewhere"
            )
        if metadata is None:
            from core.models import Base

            metadata = Base.metadata
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    def __repr__(self) -> str:
        return f"DatabaseManager(url={self.safe_url!r}, started={self._engine is not None})"


COMMIT_FAILURE = "dualcore.commit_failure"
"""`session.info` key where a commit run for the session outside `get_session()` (by the request
layer, as the response starts) leaves its error, so the breaker still sees it."""


def _is_database_failure(exc: BaseException) -> bool:
    return origin_of(exc) == DATABASE and is_transient(exc) and not is_serialization_failure(exc)


def _has_work(session: AsyncSession) -> bool:
    # After the request layer committed, the session is idle: a second commit would be a
    # no-op that still costs a transaction object and a flush.
    return session.in_transaction() or bool(session.dirty)


def _checked_out(engine: AsyncEngine) -> int:
    checkedout = getattr(engine.pool, "checkedout", None)
    return int(checkedout()) if checkedout is not None else 0


db_manager = DatabaseManager()
"""The process-wide manager built from `get_settings()`, for services that prefer a global."""
