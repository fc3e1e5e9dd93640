"""DatabaseManager details at the edges: every kind of read-only write refused, late writes after
an explicit commit, replica probes and replica connections, cleanup of a session whose server hangs,
and create_all's defaults and refusal text."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from sqlalchemy import Connection, MetaData, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import core.database.release as release_module
from core.config import get_settings
from core.database import DatabaseManager, ReadOnlySessionError
from tests.support.databases import Boom, item_model, manager_settings
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.anyio

READ_ONLY_MESSAGE = "this session is read-only; use get_session() for writes"


def _on_port(url: str, port: int) -> str:
    return re.sub(r"@[^/@]+/", f"@127.0.0.1:{port}/", url, count=1)


@pytest.fixture
async def db(database_url: str, app_name: str) -> AsyncIterator[DatabaseManager]:
    async with DatabaseManager(manager_settings(database_url, app_name)) as manager:
        yield manager


@pytest.fixture
async def item(db: DatabaseManager, pg_schema: str) -> Any:
    model = item_model(pg_schema)
    await db.create_all(model.metadata)
    async with db.get_session() as session:
        session.add(model(id=1, name="one"))
    return model


async def _names(probe: AsyncEngine, schema: str) -> list[str]:
    async with probe.connect() as conn:
        rows = await conn.execute(text(f'SELECT name FROM "{schema}".items ORDER BY id'))
        return list(rows.scalars())


# --- read-only sessions ---------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["new", "dirty", "deleted"])
async def test_read_only_session_refuses_every_kind_of_pending_change(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str, change: str
) -> None:
    # Each kind of change alone must be refused by the session itself, with a message that
    # says where writes belong, before PostgreSQL ever sees a statement.

    async def write() -> None:
        async with db.get_session(read_only=True) as session:
            if change == "new":
                session.add(item(id=2, name="two"))
            else:
                loaded = await session.get(item, 1)
                assert loaded is not None
                if change == "dirty":
                    loaded.name = "renamed"
                else:
                    await session.delete(loaded)
            await session.flush()

    with pytest.raises(ReadOnlySessionError) as info:
        await write()
    assert str(info.value) == READ_ONLY_MESSAGE
    assert await _names(probe, pg_schema) == ["one"]


async def test_read_only_session_flush_without_changes_is_allowed(
    db: DatabaseManager, item: Any
) -> None:
    async with db.get_session(read_only=True) as session:
        loaded = await session.get(item, 1)
        await session.flush()
        await session.flush([loaded])
        assert loaded is not None and loaded.name == "one"


# --- read-write sessions --------------------------------------------------------------------------


async def test_change_made_after_an_explicit_commit_is_committed_on_exit(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    # After a commit the session holds no transaction, yet an object it loaded can still be
    # modified: that change must not be silently dropped when the session ends.
    async with db.get_session() as session:
        loaded = await session.get(item, 1)
        assert loaded is not None
        await session.commit()
        loaded.name = "after commit"
    assert await _names(probe, pg_schema) == ["after commit"]


# --- cleanup of a session whose server stops answering --------------------------------------------


async def test_rollback_that_hangs_is_bounded_and_the_connection_thrown_away(
    database_url: str,
    app_name: str,
    pg_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A ROLLBACK that never gets an answer must not hold the request (or shutdown) forever:
    # after the cleanup bound the connection is invalidated instead of returned to the pool.
    cleanup = 0.3
    monkeypatch.setattr(release_module, "CLEANUP_TIMEOUT", cleanup)
    settings = manager_settings(pg_proxy.url_for(database_url), app_name)
    async with DatabaseManager(settings) as db:
        caplog.set_level(logging.WARNING, logger="dualcore.database")

        async def interrupted() -> None:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
                assert session.in_transaction()
                pg_proxy.blackhole()
                raise Boom("handler failed mid-transaction")

        # Generous against the cleanup bound; without it the rollback would wait forever.
        with anyio.fail_after(cleanup + 15), pytest.raises(Boom):
            await interrupted()
        assert db.engine.pool.checkedout() == 0
        ours = [r for r in caplog.records if r.name == "dualcore.database"]
        assert [(r.levelno, r.getMessage()) for r in ours] == [
            (logging.WARNING, "session close failed (TimeoutError); invalidating its connection")
        ]
        pg_proxy.restore()
        with anyio.fail_after(15):
            async with db.get_session() as session:
                assert (await session.execute(text("SELECT 2"))).scalar_one() == 2


async def test_failure_to_invalidate_is_logged_and_the_handler_error_kept(
    database_url: str,
    app_name: str,
    pg_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Cleanup runs while the handler's own error propagates: a second failure while throwing
    # the connection away must be logged with its traceback, never replace that error.
    monkeypatch.setattr(release_module, "CLEANUP_TIMEOUT", 0.3)
    settings = manager_settings(pg_proxy.url_for(database_url), app_name)
    async with DatabaseManager(settings) as db:
        caplog.set_level(logging.WARNING, logger="dualcore.database")

        async def interrupted() -> None:
            async with db.get_session() as session:
                real_invalidate = session.invalidate

                async def invalidate_then_fail() -> None:
                    await real_invalidate()
                    raise RuntimeError("invalidation failed")

                monkeypatch.setattr(session, "invalidate", invalidate_then_fail)
                await session.execute(text("SELECT 1"))
                pg_proxy.blackhole()
                raise Boom("handler failed mid-transaction")

        with anyio.fail_after(15), pytest.raises(Boom):
            await interrupted()
        errors = [
            r
            for r in caplog.records
            if r.name == "dualcore.database" and r.levelno >= logging.ERROR
        ]
        assert [r.getMessage() for r in errors] == ["invalidating a session's connection failed"]
        assert errors[0].exc_info is not None
        assert isinstance(errors[0].exc_info[1], RuntimeError)


# --- replicas -------------------------------------------------------------------------------------


async def test_replica_checks_probe_each_replica_by_position(
    database_url: str, app_name: str, closed_port: int
) -> None:
    # The health report names probes by position: the probe named for replica 0 must reach
    # replica 0 (down here) and the one for replica 1 replica 1 (up).
    settings = manager_settings(
        database_url,
        app_name,
        replica_urls=[_on_port(database_url, closed_port), database_url],
        connect_timeout=5,
    )
    async with DatabaseManager(settings) as db:
        checks = db.replica_checks()
        assert [name for name, _ in checks] == ["postgresql-replica-0", "postgresql-replica-1"]
        with anyio.fail_after(15):
            with pytest.raises(ConnectionRefusedError):
                await checks[0][1]()
            latency = await checks[1][1]()
        assert isinstance(latency, float) and latency > 0
        assert db.replicas is not None
        down, up = list(db.replicas)
        assert not db.replicas.is_up(down)
        assert db.replicas.is_up(up)


async def test_an_unreachable_replica_is_logged_by_its_name_with_the_password_masked(
    database_url: str, app_name: str, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "replica-s3cret"
    down_url = (
        make_url(_on_port(database_url, closed_port))
        .set(password=secret)
        .render_as_string(hide_password=False)
    )
    settings = manager_settings(
        database_url, app_name, replica_urls=[database_url, down_url], connect_timeout=5
    )
    caplog.set_level(logging.WARNING, logger="core.database.replicas")
    async with DatabaseManager(settings) as db:
        with anyio.fail_after(15), pytest.raises(ConnectionRefusedError):
            await db.replica_checks()[1][1]()
    [message] = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert message.startswith("replica replica-1 (postgresql+asyncpg://")
    assert f"@127.0.0.1:{closed_port}/" in message  # which server, to find it
    assert secret not in message


async def test_replica_checks_registered_before_start(database_url: str, app_name: str) -> None:
    db = DatabaseManager(manager_settings(database_url, app_name, replica_urls=[database_url]))
    try:
        [(name, check)] = db.replica_checks()
        assert name == "postgresql-replica-0"
        assert await check() > 0
    finally:
        await db.close()


async def test_replica_probe_reports_when_the_replicas_are_gone(
    database_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The process-wide manager reads the settings anew after `get_settings.cache_clear()`: a
    # probe registered while replicas were configured then says plainly why it cannot run.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APP__NAME", app_name)
    monkeypatch.setenv("APP__ENVIRONMENT", "development")
    monkeypatch.setenv("DATABASE__URL", database_url)
    monkeypatch.setenv("DATABASE__REPLICA_URLS", database_url)
    get_settings.cache_clear()
    db = DatabaseManager()
    try:
        [(_, check)] = db.replica_checks()
        monkeypatch.delenv("DATABASE__REPLICA_URLS")
        get_settings.cache_clear()
        await db.start()
        with pytest.raises(RuntimeError) as info:
            await check()
        assert str(info.value) == "no replicas are configured"
    finally:
        await db.close()
        get_settings.cache_clear()


async def test_replica_session_returns_its_connection(database_url: str, app_name: str) -> None:
    settings = manager_settings(database_url, app_name, replica_urls=[database_url])
    async with DatabaseManager(settings) as db:
        assert db.replicas is not None
        [replica] = list(db.replicas)
        for _ in range(3):
            async with db.get_session(read_only=True) as session:
                assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
                assert replica.engine.pool.checkedout() == 1
            assert replica.engine.pool.checkedout() == 0


# --- create_all -----------------------------------------------------------------------------------


async def test_create_all_refusal_names_the_alternative(database_url: str, app_name: str) -> None:
    async with DatabaseManager(manager_settings(database_url, app_name, "production")) as db:
        with pytest.raises(RuntimeError) as info:
            await db.create_all(MetaData())
    assert str(info.value) == (
        "create_all() runs only in the development environment; "
        "use migrations (dualcore db upgrade) elsewhere"
    )


async def test_create_all_defaults_to_the_models_base(
    database_url: str, app_name: str, pg_schema: str, probe: AsyncEngine
) -> None:
    from core.models import Base

    # The search path keeps whatever the shared Base holds inside this test's own schema.
    settings = manager_settings(database_url, app_name, search_path=pg_schema)
    async with DatabaseManager(settings) as db:
        await db.create_all()
    async with probe.connect() as conn:
        tables = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": pg_schema},
        )
        assert set(tables.scalars()) == {t.name for t in Base.metadata.tables.values()}


async def test_failure_to_close_a_replica_connection_is_logged_not_raised(
    database_url: str,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The read already succeeded; a failure while handing its connection back must not turn
    # the finished request into an error, but it must leave a trace.
    settings = manager_settings(database_url, app_name, replica_urls=[database_url])
    async with DatabaseManager(settings) as db:
        caplog.set_level(logging.WARNING, logger="dualcore.database")
        targets: list[AsyncConnection] = []
        real_close = Connection.close

        # The synchronous close, the one under `AsyncConnection.close()` that the pool sees.
        def close_then_fail(self: Connection) -> None:
            real_close(self)
            if any(self is t.sync_connection for t in targets):
                raise RuntimeError("close failed")

        monkeypatch.setattr(Connection, "close", close_then_fail)
        async with db.get_session(read_only=True) as session:
            assert isinstance(session.bind, AsyncConnection)
            targets.append(session.bind)
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        errors = [
            r
            for r in caplog.records
            if r.name == "dualcore.database" and r.levelno >= logging.ERROR
        ]
        assert [r.getMessage() for r in errors] == ["closing a replica connection failed"]
        assert targets[0].closed


# --- session_factory ------------------------------------------------------------------------------


async def test_session_factory_defaults_to_read_write_sessions(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    # Code that manages its own sessions asks for the factory with no arguments to write.
    async with db.session_factory()() as session:
        session.add(item(id=2, name="two"))
        await session.commit()
    assert await _names(probe, pg_schema) == ["one", "two"]
    async with db.session_factory(read_only=True)() as session:
        session.add(item(id=3, name="three"))
        with pytest.raises(ReadOnlySessionError):
            await session.flush()
    assert await _names(probe, pg_schema) == ["one", "two"]


async def test_a_manager_never_started_builds_its_factories_on_first_use(
    database_url: str, app_name: str
) -> None:
    # The seed's global manager is used without `start()`: the first ask builds everything.
    db = DatabaseManager(manager_settings(database_url, app_name))
    try:
        async with db.session_factory()() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        async with db.session_factory(read_only=True)() as session:
            assert (await session.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
    finally:
        await db.close()


# --- close ----------------------------------------------------------------------------------------


async def _hold_a_connection(
    db: DatabaseManager,
    release: anyio.Event,
    invalidate: bool,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A request in flight: holds a connection until `release` is set."""
    async with db.get_session(read_only=True) as session:
        await session.execute(text("SELECT 1"))
        task_status.started()
        await release.wait()
        if invalidate:
            await session.invalidate()


async def test_close_gives_up_on_a_connection_never_returned_after_half_the_shutdown_timeout(
    database_url: str, app_name: str
) -> None:
    shutdown = 2.0
    settings = manager_settings(database_url, app_name)
    settings = settings.model_copy(
        update={"app": settings.app.model_copy(update={"shutdown_timeout": shutdown})}
    )
    db = DatabaseManager(settings)
    await db.start()
    release = anyio.Event()

    async with anyio.create_task_group() as tg:
        # Its pool is disposed meanwhile: it closes its connection rather than hand it back to
        # a pool nothing will close again.
        await tg.start(_hold_a_connection, db, release, True)
        started = anyio.current_time()
        with anyio.fail_after(shutdown * 3):
            await db.close()
        took = anyio.current_time() - started
        release.set()
    # Half the shutdown timeout for requests in flight, the other half left for the rest of
    # the shutdown; a slow machine only adds to the lower bound.
    assert shutdown / 2 <= took < shutdown


@pytest.mark.parametrize("failing", ["replicas", "engine"])
async def test_close_disposes_everything_and_raises_the_first_failure(
    database_url: str, app_name: str, failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = DatabaseManager(manager_settings(database_url, app_name, replica_urls=[database_url]))
    await db.start()
    assert db.replicas is not None
    replicas, write_engine, read_engine = db.replicas, db.engine, db.read_engine
    disposed: list[str] = []
    names = {id(write_engine.sync_engine): "engine", id(read_engine.sync_engine): "read engine"}
    real_dispose, real_replicas_dispose = AsyncEngine.dispose, type(replicas).dispose

    async def dispose_engine(engine: AsyncEngine, close: bool = True) -> None:
        await real_dispose(engine, close)
        name = names.get(id(engine.sync_engine), "replica engine")
        disposed.append(name)
        if name == failing:
            raise Boom(name)

    async def dispose_replicas(self: Any) -> None:
        await real_replicas_dispose(self)
        disposed.append("replicas")
        if failing == "replicas":
            raise Boom("replicas")

    monkeypatch.setattr(AsyncEngine, "dispose", dispose_engine)
    monkeypatch.setattr(type(replicas), "dispose", dispose_replicas)
    with pytest.raises(Boom, match=f"^{failing}$"):
        await db.close()
    # One failure stops nothing else from being disposed.
    assert {"replicas", "engine", "read engine"} <= set(disposed)


async def test_close_waits_for_a_connection_still_in_use(database_url: str, app_name: str) -> None:
    # Disposing a pool does not close a checked-out connection: close first lets requests in
    # flight hand theirs back (up to half the shutdown timeout).
    db = DatabaseManager(manager_settings(database_url, app_name))
    await db.start()
    release = anyio.Event()

    async with anyio.create_task_group() as tg:
        await tg.start(_hold_a_connection, db, release, False)
        closed = anyio.Event()

        async def close() -> None:
            await db.close()
            closed.set()

        tg.start_soon(close)
        await anyio.sleep(0.3)  # close polls every 10 ms: time enough to see it is waiting
        assert not closed.is_set()
        release.set()
        # Promptly once the connection is back: 60 polls' time, however busy the machine.
        with anyio.fail_after(0.6):
            await closed.wait()


# --- how the engines and sessions are configured ----------------------------------------------


def test_an_embedded_url_needs_start_first(app_name: str) -> None:
    db = DatabaseManager(manager_settings("embedded", app_name))
    with pytest.raises(RuntimeError) as info:
        db.engine  # noqa: B018 - the property builds the engines
    assert str(info.value) == "DATABASE_URL=embedded: call `await manager.start()` first"


async def test_objects_stay_readable_after_commit_and_read_only_sessions_never_autoflush(
    db: DatabaseManager, item: Any
) -> None:
    async with db.get_session() as session:
        row = await session.get(item, 1)
        assert row is not None
        row.name = "renamed"
        await session.commit()
        # Not expired by the commit: no lazy load (which async code cannot do) to read it.
        assert row.name == "renamed"
    ro = db.session_factory(read_only=True)
    assert ro.kw["autoflush"] is False
    assert ro.kw["expire_on_commit"] is False


@pytest.mark.parametrize("pgbouncer", [False, True], ids=["direct", "pgbouncer"])
async def test_behind_pgbouncer_no_statement_is_prepared_and_no_startup_parameter_sent(
    database_url: str, app_name: str, pg_schema: str, pgbouncer: bool
) -> None:
    settings = manager_settings(
        database_url, app_name, pgbouncer=pgbouncer, statement_timeout=2.5, search_path=pg_schema
    )
    async with DatabaseManager(settings) as db:
        for read_only in (False, True):
            async with db.get_session(read_only=read_only) as session:
                # Alternating statements on one connection: a cached statement reused after
                # another was prepared would be the wrong one once both are unnamed.
                for n in range(3):
                    assert (
                        await session.execute(text("SELECT 1 + :n"), {"n": n})
                    ).scalar() == 1 + n
                    assert (
                        await session.execute(text("SELECT 2 * :n"), {"n": n})
                    ).scalar() == 2 * n
                prepared = (
                    await session.execute(text("SELECT count(*) FROM pg_prepared_statements"))
                ).scalar_one()
                timeout = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
            if pgbouncer:
                assert (prepared, timeout) == (0, "0")
            else:
                assert prepared > 0
                assert timeout == "2500ms"
