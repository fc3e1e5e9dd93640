"""Retry policy, and the error classification it relies on, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_exc
import sqlalchemy.exc as sa_exc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.config import ResilienceSettings
from core.resilience import (
    TRANSIENT_SQLSTATES,
    RetryPolicy,
    is_serialization_failure,
    is_transient,
    retry,
    retry_attempts,
    sqlstate_of,
)

# --- helpers ----------------------------------------------------------------------------------


@dataclass
class FakeTime:
    """A clock that moves only when the code under test sleeps (or a call pretends to work)."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()

    def policy(self, **kwargs: Any) -> RetryPolicy:
        return RetryPolicy(clock=self.clock, sleep=self.sleep, **kwargs)


def failing(
    errors: list[BaseException], result: Any = "ok", cost: float = 0.0, fake: FakeTime | None = None
) -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """A call that raises `errors` in turn, then returns `result`; counts its calls."""
    calls: list[int] = []

    async def fn() -> Any:
        calls.append(1)
        if fake is not None:
            fake.now += cost
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def _asyncpg_dsn(database_url: str) -> str:
    return "postgresql://" + database_url.split("://", 1)[1]


@contextmanager
def closed_port() -> Iterator[int]:
    """A local port with nothing listening; held bound so no one else takes it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# --- classification against real servers ------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=2, max_overflow=0)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def counters(engine: AsyncEngine, pg_schema: str) -> str:
    table = f'"{pg_schema}".counters'
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"))
        await conn.execute(text(f"INSERT INTO {table} VALUES (1, 0), (2, 0)"))
    return table


@pytest.mark.anyio
async def test_serialization_failure_from_asyncpg(database_url: str, counters: str) -> None:
    dsn = _asyncpg_dsn(database_url)
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        with anyio.fail_after(10):
            ta = a.transaction(isolation="serializable")
            tb = b.transaction(isolation="serializable")
            await ta.start()
            await tb.start()
            await b.fetchval(f"SELECT n FROM {counters} WHERE id = 1")  # b's snapshot
            await a.execute(f"UPDATE {counters} SET n = n + 1 WHERE id = 1")
            await ta.commit()
            with pytest.raises(asyncpg.SerializationError) as info:
                await b.execute(f"UPDATE {counters} SET n = n + 1 WHERE id = 1")
            await tb.rollback()
    finally:
        await a.close()
        await b.close()
    assert is_transient(info.value)
    assert is_serialization_failure(info.value)
    assert sqlstate_of(info.value) == "40001"


@pytest.mark.anyio
async def test_serialization_failure_through_sqlalchemy(engine: AsyncEngine, counters: str) -> None:
    serializable = engine.execution_options(isolation_level="SERIALIZABLE")
    with anyio.fail_after(10):
        async with serializable.connect() as a, serializable.connect() as b:
            # Write skew: each reads what the other writes.
            await a.execute(text(f"SELECT sum(n) FROM {counters} WHERE id = 1"))
            await b.execute(text(f"SELECT sum(n) FROM {counters} WHERE id = 2"))
            await a.execute(text(f"UPDATE {counters} SET n = n + 1 WHERE id = 2"))
            await b.execute(text(f"UPDATE {counters} SET n = n + 1 WHERE id = 1"))
            await a.commit()
            with pytest.raises(sa_exc.DBAPIError) as info:
                await b.commit()
            await b.rollback()
    assert is_transient(info.value)
    assert is_serialization_failure(info.value)
    assert sqlstate_of(info.value) == "40001"
    assert not info.value.connection_invalidated


async def _deadlock(
    first: Callable[[str], Awaitable[Any]],
    second: Callable[[str], Awaitable[Any]],
    counters: str,
) -> list[BaseException]:
    """Two sessions lock rows 1 and 2 in opposite orders; returns the errors they raised."""

    def update(row: int) -> str:
        return f"UPDATE {counters} SET n = n + 1 WHERE id = {row}"

    await first(update(1))
    await second(update(2))
    results = await asyncio.gather(first(update(2)), second(update(1)), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


@pytest.mark.anyio
async def test_deadlock_from_asyncpg(database_url: str, counters: str) -> None:
    dsn = _asyncpg_dsn(database_url)
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        with anyio.fail_after(10):
            for conn in (a, b):
                await conn.execute("SET deadlock_timeout = '50ms'")
                await conn.execute("BEGIN")

            def session(conn: asyncpg.Connection) -> Callable[[str], Awaitable[Any]]:
                async def run(sql: str) -> Any:
                    try:
                        return await conn.execute(sql)
                    except asyncpg.DeadlockDetectedError:
                        await conn.execute("ROLLBACK")  # frees the survivor
                        raise

                return run

            errors = await _deadlock(session(a), session(b), counters)
    finally:
        await a.close()
        await b.close()
    assert len(errors) == 1
    assert isinstance(errors[0], asyncpg.DeadlockDetectedError)
    assert is_transient(errors[0])
    assert is_serialization_failure(errors[0])


@pytest.mark.anyio
async def test_deadlock_through_sqlalchemy(engine: AsyncEngine, counters: str) -> None:
    with anyio.fail_after(10):
        async with engine.connect() as a, engine.connect() as b:
            for conn in (a, b):
                await conn.execute(text("SET deadlock_timeout = '50ms'"))

            def session(conn: AsyncConnection) -> Callable[[str], Awaitable[Any]]:
                async def run(sql: str) -> Any:
                    try:
                        return await conn.execute(text(sql))
                    except sa_exc.DBAPIError:
                        await conn.rollback()
                        raise

                return run

            errors = await _deadlock(session(a), session(b), counters)
            await a.rollback()
            await b.rollback()
    assert len(errors) == 1
    assert isinstance(errors[0], sa_exc.DBAPIError)
    assert sqlstate_of(errors[0]) == "40P01"
    assert is_transient(errors[0])
    assert is_serialization_failure(errors[0])


@pytest.mark.anyio
async def test_integrity_and_programming_errors_are_permanent(
    engine: AsyncEngine, database_url: str, counters: str
) -> None:
    with anyio.fail_after(10):
        async with engine.connect() as conn:
            with pytest.raises(sa_exc.IntegrityError) as unique:
                await conn.execute(text(f"INSERT INTO {counters} VALUES (1, 0)"))
            await conn.rollback()
            with pytest.raises(sa_exc.ProgrammingError) as syntax:
                await conn.execute(text("SELEC 1"))
            await conn.rollback()
        raw = await asyncpg.connect(_asyncpg_dsn(database_url))
        try:
            with pytest.raises(asyncpg.UniqueViolationError) as raw_unique:
                await raw.execute(f"INSERT INTO {counters} VALUES (2, 0)")
            await raw.execute("SET statement_timeout = '50ms'")
            with pytest.raises(asyncpg.QueryCanceledError) as timeout:
                await raw.execute("SELECT pg_sleep(2)")
        finally:
            await raw.close()
    for exc in (unique.value, syntax.value, raw_unique.value, timeout.value):
        assert not is_transient(exc), exc
        assert not is_serialization_failure(exc)
    assert sqlstate_of(unique.value) == "23505"


@pytest.mark.anyio
async def test_lost_and_closed_connections_are_transient(
    engine: AsyncEngine, database_url: str
) -> None:
    dsn = _asyncpg_dsn(database_url)
    with anyio.fail_after(10):
        victim, killer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            await killer.fetchval("SELECT pg_terminate_backend($1)", victim.get_server_pid())
            terminated = await _fail_soon(victim.fetchval, "SELECT 1")
        finally:
            victim.terminate()
            await killer.close()
        closed = await asyncpg.connect(dsn)
        await closed.close()
        with pytest.raises(asyncpg.InterfaceError) as use_after_close:
            await closed.fetchval("SELECT 1")
        busy = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.InterfaceError) as in_progress:
                await asyncio.gather(busy.fetchval("SELECT 1"), busy.fetchval("SELECT 2"))
        finally:
            busy.terminate()

        async with engine.connect() as a, engine.connect() as b:
            pid = (await a.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await b.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            invalidated = await _fail_soon(a.execute, text("SELECT 1"))
    # asyncpg raises one of several classes, depending on when it reads the server's goodbye.
    assert is_transient(terminated), repr(terminated)
    assert is_transient(use_after_close.value)
    assert not is_transient(in_progress.value), "a programming error, not a lost connection"
    assert isinstance(invalidated, sa_exc.DBAPIError)
    assert invalidated.connection_invalidated
    assert is_transient(invalidated)


@pytest.mark.anyio
@pytest.mark.parametrize("pause", [0.0, 0.05])
async def test_terminated_backend_is_transient_however_asyncpg_reports_it(
    database_url: str, pause: float
) -> None:
    # Right after pg_terminate_backend asyncpg reports ConnectionDoesNotExistError,
    # InterfaceError or (asyncpg issue 1069) InternalClientError, depending on timing.
    dsn = _asyncpg_dsn(database_url)
    seen = set()
    with anyio.fail_after(20):
        killer = await asyncpg.connect(dsn)
        try:
            for _ in range(8):
                victim = await asyncpg.connect(dsn)
                try:
                    await killer.fetchval(
                        "SELECT pg_terminate_backend($1)", victim.get_server_pid()
                    )
                    await anyio.sleep(pause)
                    error = await _fail_soon(victim.fetchval, "SELECT 1")
                finally:
                    victim.terminate()
                seen.add(type(error).__name__)
                assert is_transient(error), repr(error)
        finally:
            await killer.close()
    assert seen


async def _fail_soon(op: Callable[..., Awaitable[Any]], *args: Any) -> Exception:
    """Repeat `op` until it fails (the client notices the server hung up); return the error."""
    for _ in range(50):
        try:
            await op(*args)
        except Exception as exc:
            return exc
        await anyio.sleep(0.02)
    raise AssertionError("the operation kept succeeding")


def test_the_closed_transport_error_of_some_python_builds_is_transient() -> None:
    # CPython 3.12.1 and 3.13.0 raise this from writelines() once the peer has closed.
    closed = AttributeError(
        "'NoneType' object has no attribute '_add_writer'", name="_add_writer", obj=None
    )
    assert is_transient(closed)
    assert not is_transient(AttributeError("'Thing' object has no attribute 'x'", name="x"))
    assert not is_transient(AttributeError("_add_writer", name="_add_writer", obj=object()))


@pytest.mark.anyio
async def test_refused_connections_are_transient(database_url: str) -> None:
    with closed_port() as port, anyio.fail_after(10):
        with pytest.raises(ConnectionRefusedError) as raw:
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/test", timeout=2)
        eng = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test")
        try:
            with pytest.raises(ConnectionRefusedError) as via_engine:
                async with eng.connect():
                    pass
        finally:
            await eng.dispose()
        client = aioredis.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            with pytest.raises(redis_exc.ConnectionError) as redis_refused:
                await client.ping()
        finally:
            await client.aclose()
    for exc in (raw.value, via_engine.value, redis_refused.value):
        assert is_transient(exc), repr(exc)


@pytest.mark.anyio
async def test_pool_timeout_is_not_retried(database_url: str) -> None:
    eng = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    try:
        with anyio.fail_after(10):
            async with eng.connect():
                with pytest.raises(sa_exc.TimeoutError) as info:
                    async with eng.connect():
                        pass
    finally:
        await eng.dispose()
    # The caller's wait bound already elapsed; retrying would stretch it.
    assert not is_transient(info.value)


@pytest.mark.anyio
async def test_redis_command_errors_are_permanent(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await redis_client.set(f"{key_prefix}s", "x")
    with pytest.raises(redis_exc.ResponseError) as wrongtype:
        await redis_client.lpush(f"{key_prefix}s", "y")
    assert not is_transient(wrongtype.value)


def test_errors_that_cannot_be_provoked_on_shared_servers() -> None:
    assert is_transient(redis_exc.BusyLoadingError("loading"))
    assert is_transient(redis_exc.TimeoutError("timeout"))
    assert not is_transient(redis_exc.AuthenticationError("bad password"))
    assert not is_transient(PermissionError(13, "denied"))
    assert is_transient(asyncio.TimeoutError())
    assert is_transient(TimeoutError())
    assert not is_transient(asyncio.CancelledError())
    assert not is_transient(KeyboardInterrupt())
    assert not is_transient(ValueError("business"))
    assert not is_serialization_failure(asyncio.CancelledError())


def test_wrappers_follow_their_cause() -> None:
    def wrap(outer: Exception, inner: BaseException) -> Exception:
        try:
            raise outer from inner
        except Exception as exc:
            return exc

    assert is_transient(wrap(RuntimeError("lookup failed"), ConnectionResetError()))
    assert not is_transient(wrap(RuntimeError("lookup failed"), ValueError()))
    # A decisive outer error wins over its cause.
    assert not is_transient(wrap(redis_exc.AuthenticationError(), ConnectionResetError()))
    loop = RuntimeError("a")
    loop.__cause__ = RuntimeError("b")
    loop.__cause__.__cause__ = loop
    assert not is_transient(loop)


_KNOWN_SQLSTATES = sorted(
    {
        getattr(cls, "sqlstate", None)
        for cls in vars(asyncpg.exceptions).values()
        if isinstance(cls, type) and issubclass(cls, asyncpg.PostgresError)
    }
    - {None}
)
_sqlstates = st.one_of(
    st.sampled_from(_KNOWN_SQLSTATES),
    st.text(alphabet="0123456789ABCDEFPZ", min_size=5, max_size=5),
)


@given(code=_sqlstates)
def test_sqlstate_decides_for_postgres_errors(code: str) -> None:
    exc = asyncpg.PostgresError.new({"C": code, "M": "m", "S": "ERROR"})
    wrapped = sa_exc.DBAPIError("SELECT 1", None, exc)
    for candidate in (exc, wrapped):
        assert sqlstate_of(candidate) == code
        assert is_transient(candidate) == (code in TRANSIENT_SQLSTATES)
        assert is_serialization_failure(candidate) == (code in ("40001", "40P01"))


# --- policy -----------------------------------------------------------------------------------


def test_policy_from_settings() -> None:
    cfg = ResilienceSettings(
        retry_attempts=7, retry_max_time=2.5, retry_base_delay=0.01, retry_max_delay=0.2
    )
    policy = RetryPolicy.from_settings(cfg, jitter=False)
    assert (policy.attempts, policy.max_time, policy.base_delay, policy.max_delay) == (
        7,
        2.5,
        0.01,
        0.2,
    )
    assert policy.jitter is False
    assert RetryPolicy.from_settings(ResilienceSettings()) == RetryPolicy(
        attempts=3, max_time=5.0, base_delay=0.05, max_delay=1.0
    )


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"max_time": 0}, {"base_delay": -1}, {"max_delay": -0.1}]
)
def test_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        RetryPolicy(**kwargs)


@given(
    base=st.floats(0, 10, allow_nan=False),
    cap=st.floats(0, 100, allow_nan=False),
    n=st.integers(0, 5000),
)
def test_jittered_delay_stays_within_its_cap(base: float, cap: float, n: int) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap)
    bound = policy.backoff_cap(n)
    assert bound == min(cap, base * 2.0 ** min(n, 64))
    assert 0.0 <= policy.next_delay(n) <= bound
    assert RetryPolicy(base_delay=base, max_delay=cap, jitter=False).next_delay(n) == bound


# --- retry behaviour --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_transient_error_is_retried_until_success() -> None:
    fake = FakeTime()
    seen: list[tuple[int, BaseException, float]] = []
    errors = [ConnectionResetError("1"), asyncio.TimeoutError()]
    fn, calls = failing(errors, result=42)
    policy = fake.policy(attempts=5, base_delay=0.1, max_delay=1.0)
    assert await retry(fn, policy, on_retry=lambda *args: seen.append(args)) == 42
    assert len(calls) == 3
    assert [(a, e) for a, e, _ in seen] == [(1, errors[0]), (2, errors[1])]
    assert [d for *_, d in seen] == fake.sleeps
    assert 0 <= fake.sleeps[0] <= 0.1
    assert 0 <= fake.sleeps[1] <= 0.2


@pytest.mark.anyio
async def test_attempt_cap_raises_the_last_real_error() -> None:
    fake = FakeTime()
    errors = [ConnectionRefusedError(f"try {i}") for i in range(10)]
    fn, calls = failing(errors)
    with pytest.raises(ConnectionRefusedError) as info:
        await fake.policy(attempts=4, max_time=100).call(fn)
    assert len(calls) == 4
    assert info.value is errors[3]
    assert retry_attempts(info.value) == 4
    assert "gave up after 4 attempt(s)" in info.value.__notes__[0]
    assert "attempt limit" in info.value.__notes__[0]


@pytest.mark.anyio
async def test_time_cap_with_fixed_delays() -> None:
    fake = FakeTime()
    fn, calls = failing([ConnectionResetError()] * 100)
    policy = fake.policy(attempts=100, max_time=1.0, base_delay=0.1, max_delay=0.4, jitter=False)
    with pytest.raises(ConnectionResetError) as info:
        await policy.call(fn)
    # Pauses 0.1, 0.2, 0.4 end at 0.7; a further 0.4 would pass the 1.0 s deadline.
    assert fake.sleeps == [0.1, 0.2, 0.4]
    assert len(calls) == 4
    assert "time limit" in info.value.__notes__[0]
    assert fake.now <= 1.0


@pytest.mark.anyio
async def test_time_cap_in_real_time() -> None:
    fn, calls = failing([ConnectionResetError()] * 1000)
    policy = RetryPolicy(attempts=1000, max_time=0.3, base_delay=0.02, max_delay=0.1)
    started = time.monotonic()
    with anyio.fail_after(5), pytest.raises(ConnectionResetError) as info:
        await policy.call(fn)
    elapsed = time.monotonic() - started
    # Without the time cap the 1,000 attempts would take about 100 s; the slack is room for the
    # event loop on a busy machine.
    assert elapsed <= policy.max_time + 0.5
    assert "time limit" in info.value.__notes__[0]
    assert 2 <= len(calls) < 1000


@given(
    attempts=st.integers(1, 12),
    max_time=st.floats(0.001, 10),
    base=st.floats(0, 2),
    max_delay=st.floats(0, 5),
    cost=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bounds_hold_for_any_policy(
    attempts: int, max_time: float, base: float, max_delay: float, cost: float, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    fake = FakeTime()
    starts: list[float] = []

    async def fn() -> None:
        starts.append(fake.now)
        fake.now += cost
        raise ConnectionResetError()

    policy = fake.policy(
        attempts=attempts, max_time=max_time, base_delay=base, max_delay=max_delay,
        uniform=rng.uniform,
    )  # fmt: skip
    delays: list[tuple[int, float]] = []

    async def run() -> None:
        with pytest.raises(ConnectionResetError) as info:
            await retry(fn, policy, on_retry=lambda n, _e, d: delays.append((n, d)))
        assert retry_attempts(info.value) == len(starts)

    anyio.run(run)
    assert 1 <= len(starts) <= attempts
    assert all(start < max_time for start in starts), "no attempt starts after the deadline"
    assert sum(fake.sleeps) <= max_time
    assert fake.now <= max_time + cost  # only the last attempt in flight may run past it
    for n, delay in delays:
        assert 0.0 <= delay <= min(max_delay, base * 2.0 ** (n - 1))


@pytest.mark.anyio
async def test_permanent_error_is_not_retried_and_left_untouched() -> None:
    fake = FakeTime()
    error = ValueError("bad input")
    fn, calls = failing([error])
    with pytest.raises(ValueError, match="bad input") as info:
        await fake.policy(attempts=5).call(fn)
    assert info.value is error
    assert len(calls) == 1
    assert fake.sleeps == []
    assert not getattr(error, "__notes__", None)
    assert retry_attempts(error) is None


@pytest.mark.anyio
async def test_permanent_error_after_retries_is_annotated() -> None:
    fake = FakeTime()
    fn, calls = failing([ConnectionResetError(), KeyError("gone")])
    with pytest.raises(KeyError) as info:
        await fake.policy(attempts=5).call(fn)
    assert len(calls) == 2
    assert retry_attempts(info.value) == 2
    assert "not retryable" in info.value.__notes__[0]


@pytest.mark.anyio
async def test_custom_classifier() -> None:
    fake = FakeTime()
    fn, calls = failing([KeyError("a"), KeyError("b")], result=1)
    policy = fake.policy(attempts=5, retry_on=lambda e: isinstance(e, KeyError))
    assert await policy.call(fn) == 1
    assert len(calls) == 3


@pytest.mark.anyio
async def test_non_idempotent_work_runs_once() -> None:
    fake = FakeTime()
    error = ConnectionResetError()
    fn, calls = failing([error])
    with pytest.raises(ConnectionResetError) as info:
        await fake.policy(attempts=5).call(fn, idempotent=False)
    assert len(calls) == 1
    assert info.value is error
    assert fake.sleeps == []


@pytest.mark.anyio
async def test_cancellation_during_the_pause_propagates() -> None:
    fn, calls = failing([ConnectionResetError()] * 5)
    policy = RetryPolicy(attempts=5, max_time=60, base_delay=30, max_delay=30, jitter=False)
    started = time.monotonic()
    with anyio.move_on_after(0.1) as scope:
        await policy.call(fn)
    assert scope.cancelled_caught
    assert len(calls) == 1
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_cancellation_during_the_call_is_not_retried() -> None:
    calls: list[int] = []

    async def slow() -> None:
        calls.append(1)
        await anyio.sleep(30)

    started = time.monotonic()
    with anyio.move_on_after(0.1) as scope:
        await RetryPolicy(attempts=5, base_delay=0).call(slow)
    assert scope.cancelled_caught
    assert len(calls) == 1
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_cancellation_turned_into_an_error_is_not_retried() -> None:
    # Some client libraries answer a cancellation with a connection error of their own.
    calls: list[int] = []
    entered = asyncio.Event()

    async def converts_cancel() -> None:
        calls.append(1)
        if len(calls) > 1:
            return  # reached only when the retry ignored the cancellation
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise ConnectionResetError("closed while cancelling") from None

    policy = RetryPolicy(attempts=2, base_delay=0, max_delay=0)
    task = asyncio.ensure_future(policy.call(converts_cancel))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with anyio.fail_after(5):
        outcome = await asyncio.gather(task, return_exceptions=True)
    # Python 3.11+ exposes the pending cancellation (Task.cancelling); 3.10 cannot tell.
    if sys.version_info >= (3, 11):
        assert len(calls) == 1
        assert isinstance(outcome[0], ConnectionResetError)
    else:
        assert len(calls) == 2
