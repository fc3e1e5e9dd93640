"""DatabaseManager on a real PostgreSQL: session semantics, cancellation, timeouts, lifecycle."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings
from core.database import DatabaseManager, ReadOnlySessionError
from core.resilience import BreakerState, CircuitOpenError
from tests.support.databases import Boom, cancel_mid_query, item_model, manager_settings

pytestmark = pytest.mark.anyio

CANARY = "s3cr3t-CANARY"


def _sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error, whichever layer carries it."""
    seen: BaseException | None = getattr(exc, "orig", None) or exc
    while seen is not None:
        code = getattr(seen, "sqlstate", None)
        if isinstance(code, str):
            return code
        seen = seen.__cause__
    return None


@pytest.fixture
async def db(database_url: str, app_name: str) -> AsyncIterator[DatabaseManager]:
    async with DatabaseManager(manager_settings(database_url, app_name)) as manager:
        yield manager


@pytest.fixture
async def item(db: DatabaseManager, pg_schema: str) -> Any:
    model = item_model(pg_schema)
    await db.create_all(model.metadata)
    return model


async def _count(probe: AsyncEngine, schema: str) -> int:
    async with probe.connect() as conn:
        return int(
            (await conn.execute(text(f'SELECT count(*) FROM "{schema}".items'))).scalar_one()
        )


async def _backends(probe: AsyncEngine, app_name: str) -> list[tuple[str, str]]:
    async with probe.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT coalesce(state, ''), query FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": app_name},
        )
        return [(r[0], r[1]) for r in rows]


async def _no_backends(probe: AsyncEngine, app_name: str) -> bool:
    return not await _backends(probe, app_name)


async def _none_idle_in_transaction(probe: AsyncEngine, app_name: str) -> bool:
    states = [state for state, _ in await _backends(probe, app_name)]
    return not any(s.startswith("idle in transaction") for s in states)


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds; fail after 3 seconds."""
    with anyio.fail_after(3):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)


def _checked_out(db: DatabaseManager) -> tuple[int, int]:
    return db.engine.pool.checkedout(), db.read_engine.pool.checkedout()


# --- read-write sessions --------------------------------------------------------------------------


async def test_commit_on_clean_exit(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    async with db.get_session() as session:
        session.add(item(id=1, name="one"))
        await session.execute(
            text(f"INSERT INTO \"{pg_schema}\".items (id, name) VALUES (2, 'two')")
        )
    assert await _count(probe, pg_schema) == 2
    assert _checked_out(db) == (0, 0)


async def test_rollback_on_exception_which_propagates_unchanged(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    error = Boom("from the handler")

    async def failing_unit() -> None:
        async with db.get_session() as session:
            session.add(item(id=1, name="one"))
            await session.flush()
            raise error

    with pytest.raises(Boom) as info:
        await failing_unit()
    assert info.value is error
    assert await _count(probe, pg_schema) == 0
    assert _checked_out(db) == (0, 0)


async def test_failed_commit_propagates_and_releases(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    async with db.get_session() as session:
        session.add(item(id=1, name="one"))

    async def duplicate() -> None:
        async with db.get_session() as session:
            session.add(item(id=2, name="two"))
            session.add(item(id=1, name="duplicate"))

    with pytest.raises(IntegrityError):
        await duplicate()
    async with probe.connect() as conn:
        names = (await conn.execute(text(f'SELECT name FROM "{pg_schema}".items'))).scalars()
        assert list(names) == ["one"]
    assert _checked_out(db) == (0, 0)


async def test_sessions_run_with_the_configured_application_name(
    db: DatabaseManager, app_name: str
) -> None:
    async with db.get_session() as session:
        assert (await session.execute(text("SHOW application_name"))).scalar_one() == app_name
    async with db.get_session(read_only=True) as session:
        assert (await session.execute(text("SHOW application_name"))).scalar_one() == app_name


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
async def test_cancelled_mid_query_releases_the_connection(
    db: DatabaseManager, probe: AsyncEngine, app_name: str, read_only: bool
) -> None:

    async def slow(started: anyio.Event) -> None:
        async with db.get_session(read_only=read_only) as session:
            started.set()
            await session.execute(text("SELECT pg_sleep(5)"))

    await cancel_mid_query(slow)
    assert _checked_out(db) == (0, 0)
    # The server must not keep a backend of ours parked inside a transaction.
    await _until(lambda: _none_idle_in_transaction(probe, app_name))
    # And the pool still works.
    async with db.get_session(read_only=read_only) as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    assert _checked_out(db) == (0, 0)


async def test_cancelled_during_commit_releases_the_connection(
    db: DatabaseManager, item: Any, probe: AsyncEngine, app_name: str, pg_schema: str
) -> None:
    # A deferred trigger makes COMMIT itself slow, so the cancellation lands inside it.
    async with probe.begin() as conn:
        await conn.execute(
            text(
                f'CREATE FUNCTION "{pg_schema}".slow() RETURNS trigger LANGUAGE plpgsql '
                "AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
            )
        )
        await conn.execute(
            text(
                f'CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON "{pg_schema}".items '
                f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{pg_schema}".slow()'
            )
        )
    committing = anyio.Event()

    async def write() -> None:
        async with db.get_session() as session:
            session.add(item(id=1, name="one"))
            await session.flush()
            committing.set()

    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await committing.wait()
                await anyio.sleep(0.2)
                tg.cancel_scope.cancel()
        assert _checked_out(db) == (0, 0)
        await _until(lambda: _none_idle_in_transaction(probe, app_name))
        async with db.get_session() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        # The server may still be running the abandoned COMMIT; end it so the schema drops fast.
        async with probe.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND query LIKE 'COMMIT%'"
                ),
                {"name": app_name},
            )


# --- read-only sessions ---------------------------------------------------------------------------


async def test_read_only_session_reads(db: DatabaseManager, item: Any) -> None:
    async with db.get_session() as session:
        session.add(item(id=7, name="seven"))
    async with db.get_session(read_only=True) as session:
        found = await session.get(item, 7)
        assert found is not None
        assert found.name == "seven"
        count = (await session.execute(select(func.count()).select_from(item))).scalar_one()
        assert count == 1
        assert (await session.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
    assert _checked_out(db) == (0, 0)


async def test_read_only_session_refuses_orm_writes(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:

    async def write() -> None:
        async with db.get_session(read_only=True) as session:
            session.add(item(id=1, name="one"))
            await session.flush()

    with pytest.raises(ReadOnlySessionError):
        await write()
    assert await _count(probe, pg_schema) == 0
    assert _checked_out(db) == (0, 0)


async def test_read_only_session_does_not_commit_on_exit(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    async with db.get_session(read_only=True) as session:
        session.add(item(id=1, name="one"))
    assert await _count(probe, pg_schema) == 0


async def test_read_only_session_raw_insert_refused_by_postgres(
    db: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str
) -> None:
    with pytest.raises(DBAPIError) as info:
        async with db.get_session(read_only=True) as session:
            await session.execute(
                text(f"INSERT INTO \"{pg_schema}\".items (id, name) VALUES (1, 'x')")
            )
    assert _sqlstate(info.value) == "25006"  # read_only_sql_transaction
    assert "read-only transaction" in str(info.value)
    assert await _count(probe, pg_schema) == 0
    assert _checked_out(db) == (0, 0)


# --- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
async def test_statement_timeout_enforced(
    database_url: str, app_name: str, read_only: bool
) -> None:
    settings = manager_settings(database_url, app_name, statement_timeout=0.2)
    async with DatabaseManager(settings) as db:
        start = time.perf_counter()
        with pytest.raises(DBAPIError) as info:
            async with db.get_session(read_only=read_only) as session:
                await session.execute(text("SELECT pg_sleep(2)"))
        elapsed = time.perf_counter() - start
        assert _sqlstate(info.value) == "57014"  # query_canceled
        assert elapsed < 1.0
        assert _checked_out(db) == (0, 0)


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
async def test_the_server_gets_the_configured_statement_timeout_and_search_path(
    database_url: str, app_name: str, pg_schema: str, read_only: bool
) -> None:
    settings = manager_settings(
        database_url, app_name, statement_timeout=2.5, search_path=pg_schema
    )
    async with DatabaseManager(settings) as db, db.get_session(read_only=read_only) as session:
        shown = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
        assert shown == "2500ms"
        assert (await session.execute(text("SHOW search_path"))).scalar_one() == pg_schema
        name = (await session.execute(text("SHOW application_name"))).scalar_one()
        assert name == app_name


# --- lifecycle ------------------------------------------------------------------------------------


async def test_ping_returns_round_trip_seconds(db: DatabaseManager) -> None:
    latency = await db.ping()
    assert isinstance(latency, float)
    assert 0 < latency < 5


async def test_close_then_start_again(database_url: str, app_name: str, probe: AsyncEngine) -> None:
    db = DatabaseManager(manager_settings(database_url, app_name))
    await db.start()
    await db.ping()
    async with db.get_session() as session:
        await session.execute(text("SELECT 1"))
    assert await _backends(probe, app_name)
    await db.close()
    assert "started=False" in repr(db)
    await _until(lambda: _no_backends(probe, app_name))
    await db.close()  # closing twice is harmless

    await db.start()
    try:
        assert isinstance(await db.ping(), float)
        async with db.get_session() as session:
            assert (await session.execute(text("SELECT 2"))).scalar_one() == 2
    finally:
        await db.close()


async def test_server_version(db: DatabaseManager) -> None:
    assert (await db.server_version())[:2].isdigit()


@pytest.mark.parametrize("environment", ["test", "production"])
async def test_create_all_refuses_outside_development(
    database_url: str, app_name: str, pg_schema: str, probe: AsyncEngine, environment: str
) -> None:
    async with DatabaseManager(manager_settings(database_url, app_name, environment)) as db:
        with pytest.raises(RuntimeError, match="development"):
            await db.create_all(item_model(pg_schema).metadata)
    async with probe.connect() as conn:
        tables = await conn.execute(
            text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
            {"s": pg_schema},
        )
        assert tables.scalar_one() == 0


async def test_create_all_in_development(
    db: DatabaseManager, pg_schema: str, probe: AsyncEngine
) -> None:
    model = item_model(pg_schema)
    await db.create_all(model.metadata)
    await db.create_all(model.metadata)  # idempotent
    async with probe.connect() as conn:
        tables = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": pg_schema},
        )
        assert list(tables.scalars()) == ["items"]


async def test_repr_and_urls_hide_the_password(app_name: str) -> None:
    url = f"postgresql://u:{CANARY}@127.0.0.1:5432/d"
    db = DatabaseManager(manager_settings(url, app_name))
    try:
        for shown in (repr(db), db.url, db.safe_url, repr(db.engine), repr(db.engine.url)):
            assert CANARY not in shown
        assert db.engine.url.password == CANARY
    finally:
        await db.close()


async def test_use_after_close_is_refused_until_restarted(
    database_url: str, app_name: str, probe: AsyncEngine
) -> None:
    from core.errors import ResourceClosedError
    from core.http import error_response_for

    manager = DatabaseManager(manager_settings(database_url, app_name))
    await manager.start()
    await manager.ping()
    await manager.close()
    # A late request must not silently build a pool that nothing would close.
    with pytest.raises(ResourceClosedError) as caught:
        async with manager.get_session(read_only=True):
            pass
    mapped = error_response_for(caught.value)
    assert mapped is not None and mapped.status == 503
    assert await _no_backends(probe, app_name)
    await manager.start()
    try:
        assert await manager.ping() > 0
    finally:
        await manager.close()


# --- interrupted transactions and the breaker -----------------------------------------------------


@pytest.fixture
async def single(database_url: str, app_name: str) -> AsyncIterator[DatabaseManager]:
    """A manager whose read-write pool holds exactly one connection."""
    async with DatabaseManager(manager_settings(database_url, app_name, pool_size=1)) as manager:
        yield manager


async def _backend_pid(db: DatabaseManager) -> int:
    async with db.get_session() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@pytest.mark.parametrize("interruption", ["cancelled", "error"])
async def test_an_interrupted_transaction_hands_its_connection_back_clean(
    single: DatabaseManager, item: Any, probe: AsyncEngine, pg_schema: str, interruption: str
) -> None:
    # A unit of work stopped between statements, its transaction open: cancelled (the client
    # went away while the handler awaited something else) or failed with an error. Its cleanup
    # rolls back and returns the connection rather than throwing it away: the next session on
    # the one-connection pool runs on the very same server backend, outside that transaction.
    pid = await _backend_pid(single)
    inside = anyio.Event()

    async def unit() -> None:
        async with single.get_session() as session:
            session.add(item(id=1, name="uncommitted"))
            await session.flush()
            await session.execute(text("SELECT set_config('dctest.mark', 'dirty', true)"))
            inside.set()
            if interruption == "error":
                raise Boom("mid-transaction")
            await anyio.sleep_forever()

    with anyio.fail_after(5):
        if interruption == "error":
            with pytest.raises(Boom):
                await unit()
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(unit)
                await inside.wait()
                tg.cancel_scope.cancel()

    assert _checked_out(single) == (0, 0)
    with anyio.fail_after(5):
        async with single.get_session() as session:
            assert (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one() == pid
            mark = await session.execute(text("SELECT current_setting('dctest.mark', true)"))
            assert mark.scalar_one() in (None, "")  # the transaction-local value is gone
    assert await _count(probe, pg_schema) == 0


async def _select_one_in_a_session(db: DatabaseManager) -> None:
    async with db.get_session() as session:
        await session.execute(text("SELECT 1"))


async def _select_one_on_a_read_connection(db: DatabaseManager) -> None:
    async with db.read_connection() as conn:
        await conn.execute(text("SELECT 1"))


@pytest.mark.parametrize(
    ("use", "engine"),
    [(_select_one_in_a_session, "engine"), (_select_one_on_a_read_connection, "read_engine")],
    ids=["session", "read connection"],
)
async def test_refused_connections_open_the_breaker_and_then_fail_fast(
    app_name: str,
    closed_port: int,
    use: Callable[[DatabaseManager], Awaitable[None]],
    engine: str,
) -> None:
    threshold = 3
    settings = Settings(
        _env_file=None,
        app={"name": app_name},
        database={"url": f"postgresql://u@127.0.0.1:{closed_port}/d", "connect_timeout": 2},
        resilience={"breaker_failure_threshold": threshold, "breaker_reset_timeout": 60},
    )
    async with DatabaseManager(settings) as db:
        attempts: list[object] = []
        sync_engine = getattr(db, engine).sync_engine
        event.listen(sync_engine, "do_connect", lambda *args: attempts.append(args))
        with anyio.fail_after(10):
            for n in range(1, threshold + 1):
                with pytest.raises(ConnectionRefusedError):
                    await use(db)
                assert len(attempts) == n
                expected = BreakerState.OPEN if n == threshold else BreakerState.CLOSED
                assert db.breaker.state is expected
                assert db.breaker.snapshot().consecutive_failures == n
            # One breaker guards the primary, sessions and read connections alike.
            entered = False
            with pytest.raises(CircuitOpenError) as info:
                async with db.get_session():
                    entered = True
            with pytest.raises(CircuitOpenError):
                async with db.read_connection():
                    entered = True
        assert not entered  # refused before a session or connection was handed out
        assert len(attempts) == threshold  # and without another connection attempt
        assert info.value.retry_after > 50
