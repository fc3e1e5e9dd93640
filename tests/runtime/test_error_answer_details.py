"""The exact answers of the HTTP error policy: Retry-After per cause, the dependency named in
the body, the conflict body, and errors that arrive wrapped in an exception group.

Every error is raised by a real manager, breaker or server; none is built by hand except the
exception group, which is how a framework's task group hands real errors over.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from core import Core, DatabaseManager, RedisManager, Settings
from core.errors import ResourceClosedError
from core.http import error_response_for
from core.resilience import CircuitBreaker, CircuitOpenError
from core.runtime import DependencyUnavailable

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

pytestmark = pytest.mark.anyio

UNAVAILABLE = "Service temporarily unavailable"


def _settings(database_url: str, redis_url: str, **groups: Any) -> Settings:
    database = {"url": database_url, **groups.pop("database", {})}
    return Settings(
        _env_file=None,
        app={"name": f"dcanswer-{uuid.uuid4().hex[:8]}", **groups.pop("app", {})},
        database=database,
        redis={"url": redis_url, "socket_connect_timeout": 0.5, **groups.pop("redis", {})},
        **groups,
    )


def _unavailable(dependency: str, retry_after: str) -> tuple[int, dict[str, str], dict[str, str]]:
    return 503, {"detail": UNAVAILABLE, "dependency": dependency}, {"Retry-After": retry_after}


def _answer(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    mapped = error_response_for(exc)
    assert mapped is not None, f"{exc!r} left unmapped"
    return mapped.status, mapped.body, mapped.headers


async def test_a_closed_manager_is_its_own_dependency_down(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    settings = _settings(database_url, redis_url, redis={"key_prefix": key_prefix})
    db, redis = DatabaseManager(settings), RedisManager(settings)
    await db.start()
    await db.close()
    await redis.start()
    await redis.close()

    with pytest.raises(ResourceClosedError) as db_closed:
        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))
    with pytest.raises(ResourceClosedError) as redis_closed:
        await redis.client.ping()

    assert _answer(db_closed.value) == _unavailable("database", "5")
    assert _answer(redis_closed.value) == _unavailable("redis", "5")


async def test_a_dependency_that_never_came_up_is_named_in_the_answer(
    database_url: str, closed_port: int
) -> None:
    settings = _settings(
        database_url,
        f"redis://127.0.0.1:{closed_port}/0",
        app={"startup_timeout": 0.3},
        redis={"retry_attempts": 0},
    )
    with pytest.raises(DependencyUnavailable) as info:
        async with Core(settings):
            pytest.fail("started although Redis is down")
    assert _answer(info.value) == _unavailable("redis", "5")


async def test_postgresql_that_never_came_up_is_the_database_as_in_every_answer(
    redis_url: str, closed_port: int
) -> None:
    settings = _settings(
        f"postgresql+asyncpg://app@127.0.0.1:{closed_port}/app",
        redis_url,
        app={"startup_timeout": 0.3},
    )
    with pytest.raises(DependencyUnavailable) as info:
        async with Core(settings):
            pytest.fail("started although PostgreSQL is down")
    assert _answer(info.value) == _unavailable("database", "5")


async def test_a_full_pool_asks_for_a_retry_in_one_second(
    database_url: str, redis_url: str
) -> None:
    settings = _settings(
        database_url,
        redis_url,
        database={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2},
    )
    async with DatabaseManager(settings) as db, db.get_session() as holder:
        await holder.execute(text("SELECT 1"))
        with pytest.raises(Exception) as waited:  # noqa: PT011 - the mapping decides below
            async with db.get_session() as waiter:
                await waiter.execute(text("SELECT 1"))
    assert _answer(waited.value) == _unavailable("database", "1")


async def _refused_database(redis_url: str, closed_port: int) -> BaseException:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port}/x"
    async with DatabaseManager(_settings(url, redis_url)) as down:
        with pytest.raises(ConnectionRefusedError) as refused:
            await down.ping()
    return refused.value


async def test_a_refused_database_asks_for_a_retry_in_five_seconds(
    redis_url: str, closed_port: int
) -> None:
    refused = await _refused_database(redis_url, closed_port)
    assert _answer(refused) == _unavailable("database", "5")


async def test_an_open_breaker_rounds_its_wait_to_whole_seconds_of_at_least_one() -> None:
    now = [100.0]
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=10.0, clock=lambda: now[0])
    breaker.record_failure(ConnectionRefusedError())

    async def rejected() -> CircuitOpenError:
        with pytest.raises(CircuitOpenError) as info:
            async with breaker:
                pytest.fail("admitted by an open breaker")
        return info.value

    now[0] = 103.4  # 6.6 s left
    assert _answer(await rejected()) == _unavailable("redis", "7")
    now[0] = 109.7  # 0.3 s left: rounds to 0, answered as 1
    assert _answer(await rejected()) == _unavailable("redis", "1")
    # Half-open with its one probe slot taken: retry_after is 0, the answer still 1.
    now[0] = 110.0
    assert breaker.allow()
    probe_busy = await rejected()
    assert probe_busy.retry_after == 0
    assert _answer(probe_busy) == _unavailable("redis", "1")
    breaker.record_success()


async def test_a_conflict_says_so_in_its_body(
    database_url: str, redis_url: str, pg_schema: str
) -> None:
    settings = _settings(database_url, redis_url, database={"search_path": pg_schema})
    async with DatabaseManager(settings) as db:
        async with db.get_session() as s:
            await s.execute(text("CREATE TABLE once (v int UNIQUE)"))
            await s.execute(text("INSERT INTO once VALUES (1)"))
        with pytest.raises(Exception, match="once") as info:
            async with db.get_session() as s:
                await s.execute(text("INSERT INTO once VALUES (1)"))
    status, body, headers = _answer(info.value)
    assert (status, body, headers) == (
        409,
        {"detail": "Conflict with the current state of the resource"},
        {},
    )


async def test_a_group_is_answered_by_its_first_known_error(
    redis_url: str, closed_port: int
) -> None:
    refused = await _refused_database(redis_url, closed_port)
    unknown = ValueError("the app's own")
    grouped = ExceptionGroup("cleanup", [unknown, refused])
    assert _answer(grouped) == _unavailable("database", "5")
    assert error_response_for(ExceptionGroup("cleanup", [unknown, KeyError("k")])) is None
