"""What the core answers for each failure, with every error really provoked: the HTTP mapping
table, which errors count against the database breaker, and the same through both frameworks.

An error only counts as a dependency's when its own client raised it: the same exception type
raised by application code (an `OSError`, a `TimeoutError`) is the framework's 500 and never
opens a breaker.

No postponed annotations: the frameworks read the handlers' annotations as objects.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text

from core import CacheUnavailable, Core, DatabaseManager, RedisManager, Settings
from core.http import error_response_for
from core.resilience import BreakerState, CircuitBreaker, CircuitOpenError, mark_origin
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio


def _settings(database_url: str, redis_url: str, schema: str, prefix: str, **db: Any) -> Settings:
    return Settings(
        _env_file=None,
        app={"name": f"dcmap-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "search_path": schema, **db},
        redis={"url": redis_url, "key_prefix": prefix, "socket_connect_timeout": 0.5},
        cache={"operation_timeout": 1.0},
        resilience={"breaker_failure_threshold": 2, "breaker_reset_timeout": 30},
    )


@pytest.fixture
async def db(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> AsyncIterator[DatabaseManager]:
    settings = _settings(database_url, redis_url, pg_schema, key_prefix, pool_size=1)
    async with DatabaseManager(settings) as manager:
        async with manager.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE uniq (v int UNIQUE)"))
            await conn.execute(text("INSERT INTO uniq VALUES (1)"))
        yield manager


def _raise_sqlstate(state: str) -> Any:
    # A real server-side error with this SQLSTATE, through the engine like any other.
    return text(f"DO $$ BEGIN RAISE EXCEPTION 'provoked' USING ERRCODE = '{state}'; END $$")


async def _caught(fn: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await fn()
    except Exception as exc:
        return exc
    raise AssertionError(f"{fn} raised nothing")


# --- the mapping table ----------------------------------------------------------------------


async def test_each_provoked_failure_maps_to_its_answer(
    db: DatabaseManager, database_url: str, redis_url: str, closed_port: int, key_prefix: str
) -> None:
    async def in_session(statement: Any) -> None:
        async with db.get_session() as s:
            await s.execute(statement)

    async def pool_wait() -> None:
        tight = DatabaseManager(
            _settings(
                database_url,
                redis_url,
                "public",
                key_prefix,
                pool_size=1,
                max_overflow=0,
                pool_timeout=0.2,
            )
        )
        async with tight, tight.get_session() as holder:
            await holder.execute(text("SELECT 1"))
            async with tight.get_session() as waiter:
                await waiter.execute(text("SELECT 1"))

    async def refused_database() -> None:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port}/x"
        async with DatabaseManager(_settings(url, redis_url, "public", key_prefix)) as down:
            await down.ping()

    async def refused_redis() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=0.5)
        try:
            await client.get("k")
        finally:
            await client.aclose()

    async def cache_without_redis() -> None:
        url = f"redis://127.0.0.1:{closed_port}/0"
        async with RedisManager(_settings(database_url, url, "public", key_prefix)) as redis:
            await redis.cache.delete("k")

    async def open_breaker() -> None:
        breaker = CircuitBreaker("database", failure_threshold=1, reset_timeout=7)
        breaker.record_failure(ConnectionRefusedError())
        await breaker.call(asyncio.sleep, 0)

    table: list[tuple[str, Callable[[], Awaitable[Any]], int, str | None]] = [
        ("unique violation", lambda: in_session(text("INSERT INTO uniq VALUES (1)")), 409, None),
        ("serialization failure", lambda: in_session(_raise_sqlstate("40001")), 409, None),
        ("deadlock", lambda: in_session(_raise_sqlstate("40P01")), 409, None),
        ("server shutting down", lambda: in_session(_raise_sqlstate("57P01")), 503, "database"),
        ("pool wait timed out", pool_wait, 503, "database"),
        ("database refused", refused_database, 503, "database"),
        ("redis refused", refused_redis, 503, "redis"),
        ("cache without redis", cache_without_redis, 503, "redis"),
        ("breaker open", open_breaker, 503, "database"),
    ]
    for name, provoke, status, dependency in table:
        exc = await _caught(provoke)
        mapped = error_response_for(exc)
        assert mapped is not None, f"{name}: {exc!r} left unmapped"
        assert mapped.status == status, f"{name}: {exc!r}"
        if dependency is not None:
            assert mapped.body == {
                "detail": "Service temporarily unavailable",
                "dependency": dependency,
            }, name
            assert int(mapped.headers["Retry-After"]) >= 1, name
    # The open breaker's Retry-After is the breaker's own remaining time.
    exc = await _caught(open_breaker)
    assert isinstance(exc, CircuitOpenError)
    assert error_response_for(exc).headers["Retry-After"] == "7"  # type: ignore[union-attr]


async def test_the_same_types_raised_by_application_code_are_left_to_the_framework(
    tmp_path: Any,
) -> None:
    async def app_file() -> None:
        (tmp_path / "missing").read_text()

    async def app_timeout() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    async def app_refused() -> None:
        raise ConnectionRefusedError("the app's own socket")

    for provoke in (app_file, app_timeout, app_refused):
        assert error_response_for(await _caught(provoke)) is None, provoke.__name__


# --- the database breaker -------------------------------------------------------------------


async def test_app_errors_inside_a_session_never_open_the_database_breaker(
    db: DatabaseManager, tmp_path: Any
) -> None:
    def app_errors() -> list[BaseException]:
        return [
            FileNotFoundError(tmp_path / "missing"),
            TimeoutError("the app's own deadline"),
            ConnectionResetError("a socket of the app's"),
            CacheUnavailable("Redis unreachable"),
            aioredis.ConnectionError("Redis unreachable"),
        ]

    async def raise_inside_session(error: BaseException) -> None:
        async with db.get_session() as s:
            await s.execute(text("SELECT 1"))
            raise error

    for _ in range(3):
        for error in app_errors():
            with pytest.raises(type(error)):
                await raise_inside_session(error)
    for state in ("40001", "40P01", "23505"):
        for _ in range(3):
            with pytest.raises(Exception, match="provoked"):
                async with db.get_session() as s:
                    await s.execute(_raise_sqlstate(state))
    snapshot = db.breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.consecutive_failures == 0


async def test_the_engines_own_connection_failures_open_the_database_breaker(
    db: DatabaseManager,
) -> None:
    for _ in range(2):  # the threshold
        with pytest.raises(Exception, match="provoked"):
            async with db.get_session() as s:
                await s.execute(_raise_sqlstate("57P01"))
    assert db.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        async with db.get_session():
            pass


async def test_loader_errors_never_open_the_redis_breaker(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Any
) -> None:
    settings = _settings(database_url, redis_url, "public", key_prefix)
    errors: list[BaseException] = [
        FileNotFoundError(tmp_path / "missing"),
        TimeoutError("the loader's own deadline"),
        aioredis.ConnectionError("another Redis of the app's"),
    ]
    async with RedisManager(settings) as redis:
        for i in range(3):
            for error in errors:

                async def load(error: BaseException = error) -> int:
                    raise error

                with pytest.raises(type(error)):
                    await redis.cache.get_or_set(("loader", i, type(error).__name__), load)
        snapshot = redis.breaker.snapshot()
        assert snapshot.state is BreakerState.CLOSED
        assert snapshot.consecutive_failures == 0


# --- through each framework -----------------------------------------------------------------

# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    def _app(framework: str, core: Core, tmp_path: Any) -> Any:
        async def handler_body(session: Any, fail: str) -> dict[str, str]:
            await session.execute(text("SELECT 1"))
            if fail == "file":
                (tmp_path / "missing").read_text()
            if fail == "timeout":
                raise TimeoutError("the app's own deadline")
            if fail == "cache":
                await core.redis.cache.delete("k")
            return {"ok": "yes"}

        if framework == "fastapi":
            from fastapi import FastAPI

            from integrations.fastapi import DbSession, install

            app = FastAPI()

            @app.get("/fail/{fail}")
            async def fail_route(fail: str, db: DbSession) -> dict[str, str]:
                return await handler_body(db, fail)

            install(app, core)
            return app

        from litestar import Litestar, get
        from litestar.di import NamedDependency
        from sqlalchemy.ext.asyncio import AsyncSession

        from integrations.litestar import CorePlugin

        @get("/fail/{fail:str}")
        async def fail_route_ls(
            fail: str, db_session: NamedDependency[AsyncSession]
        ) -> dict[str, str]:
            return await handler_body(db_session, fail)

        return Litestar(route_handlers=[fail_route_ls], plugins=[CorePlugin(core)])

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_through_http_app_errors_are_500_dependency_errors_503(
        framework: str,
        database_url: str,
        pg_schema: str,
        key_prefix: str,
        closed_port: int,
        tmp_path: Any,
    ) -> None:
        down_redis = f"redis://127.0.0.1:{closed_port}/0"
        settings = _settings(database_url, down_redis, pg_schema, key_prefix)
        core = Core(settings)
        await core.db.start()
        try:
            app = _app(framework, core, tmp_path)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for _ in range(3):  # past the breaker's threshold
                    for fail in ("file", "timeout"):
                        r = await client.get(f"/fail/{fail}")
                        assert r.status_code == 500, (fail, r.text)
                assert core.db.breaker.state is BreakerState.CLOSED
                r = await client.get("/fail/cache")
                assert r.status_code == 503
                assert r.json()["dependency"] == "redis"
                assert (await client.get("/fail/none")).status_code == 200
                # An open breaker: 503 at once, with the breaker's own Retry-After.
                refused = ConnectionRefusedError("refused")
                mark_origin(refused, "database")  # as the engine marks its own connect errors
                for _ in range(2):
                    core.db.breaker.record_failure(refused)
                r = await client.get("/fail/none")
                assert r.status_code == 503
                assert r.json() == {
                    "detail": "Service temporarily unavailable",
                    "dependency": "database",
                }
                assert 1 <= int(r.headers["retry-after"]) <= 30
        finally:
            await core.db.close()
            await core.redis.close()
