"""Core: bounded start-up, clear errors, shutdown that closes all, use as `lifespan(app)`."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings
from core.database import DatabaseManager
from core.redis_client import RedisManager
from core.runtime import Core, DependencyUnavailable, wait_until_ready

pytestmark = pytest.mark.anyio

CANARY = "s3cr3t-CANARY"

# Added to a bound derived from a configured timeout: room for the event loop on a busy machine
# (two cores shared with other work), and still well below the timeouts the bounds guard against.
SLACK = 1.0


class Boom(Exception):
    """A failure injected by a test resource."""


class Fake:
    """A resource that records its calls and fails where told to."""

    def __init__(
        self,
        log: list[str] | None = None,
        *,
        name: str = "fake",
        fail_start: bool = False,
        fail_close: bool = False,
        hang_close: bool = False,
        ping_failures: int = 0,
        ping_error: str = "not yet",
    ) -> None:
        self.calls: list[str] = log if log is not None else []
        self.name = name
        self.fail_start = fail_start
        self.fail_close = fail_close
        self.hang_close = hang_close
        self.ping_failures = ping_failures
        self.ping_error = ping_error
        self.pings = 0

    @property
    def safe_url(self) -> str:
        return f"fake://{self.name}"

    async def start(self) -> None:
        self.calls.append(f"start {self.name}")
        if self.fail_start:
            raise Boom(f"{self.name} could not start")

    async def ping(self) -> float:
        self.pings += 1
        if self.pings <= self.ping_failures:
            raise ConnectionError(self.ping_error)
        return 0.0

    async def close(self) -> None:
        self.calls.append(f"close {self.name}")
        if self.hang_close:
            await anyio.sleep_forever()
        if self.fail_close:
            raise Boom(f"{self.name} close failed")


class _Recording:
    """Mixin for a real manager that records its close and can fail after closing."""

    dependency = ""

    def __init__(self, settings: Settings, log: list[str], *, fail_close: bool = False) -> None:
        super().__init__(settings)  # type: ignore[call-arg]
        self.calls = log
        self.fail_close = fail_close

    async def close(self) -> None:
        self.calls.append(f"close {self.dependency}")
        await super().close()  # type: ignore[misc]
        if self.fail_close:
            raise Boom(f"{self.dependency} close failed")


class RecordingDatabase(_Recording, DatabaseManager):
    dependency = "PostgreSQL"


class RecordingRedis(_Recording, RedisManager):
    dependency = "Redis"


@pytest.fixture
def make_settings(database_url: str, redis_url: str, app_name: str) -> Callable[..., Settings]:
    def make(
        *, database: dict[str, Any] | None = None, redis: dict[str, Any] | None = None, **app: Any
    ) -> Settings:
        return Settings(
            _env_file=None,
            app={"name": app_name, "startup_timeout": 5.0, **app},
            database={"url": database_url, "pool_size": 2, **(database or {})},
            redis={"url": redis_url, **(redis or {})},
        )

    return make


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds; fail after 3 seconds."""
    with anyio.fail_after(3):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)


async def _pg_backends(probe: AsyncEngine, app_name: str) -> int:
    async with probe.connect() as conn:
        count = await conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": app_name},
        )
        return int(count.scalar_one())


async def _redis_clients(observer: aioredis.Redis, app_name: str) -> int:
    return sum(1 for c in await observer.client_list() if c.get("name") == app_name)


AllClosed = Callable[[], Awaitable[None]]


@pytest.fixture
def all_closed(probe: AsyncEngine, redis_client: aioredis.Redis, app_name: str) -> AllClosed:
    """Waits until the servers no longer see any connection of ours."""

    async def closed() -> bool:
        return (
            await _pg_backends(probe, app_name) == 0
            and await _redis_clients(redis_client, app_name) == 0
        )

    async def wait() -> None:
        await _until(closed)

    return wait


# --- start-up -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dependency", ["PostgreSQL", "Redis"])
async def test_unreachable_dependency_fails_within_bound_naming_it(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
    caplog: pytest.LogCaptureFixture,
    dependency: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    if dependency == "PostgreSQL":
        settings = make_settings(
            startup_timeout=1.0, database={"url": f"postgresql://u:{CANARY}@127.0.0.1:1/d"}
        )
    else:
        settings = make_settings(
            startup_timeout=1.0, redis={"url": f"redis://:{CANARY}@127.0.0.1:1/0"}
        )
    db, redis = DatabaseManager(settings), RedisManager(settings)

    start = time.perf_counter()
    with pytest.raises(DependencyUnavailable) as info:
        async with Core(settings, db=db, redis=redis):
            pytest.fail("started although a dependency is down")
    elapsed = time.perf_counter() - start

    # Retries stop at the start-up bound (a pause that would end after it is not taken).
    assert elapsed < settings.app.startup_timeout + SLACK
    message = str(info.value)
    assert dependency in message
    assert "127.0.0.1:1" in message
    assert info.value.dependency == dependency
    assert CANARY not in message
    assert CANARY not in repr(info.value)
    assert CANARY not in info.value.url
    assert CANARY not in caplog.text
    # The dependency that did start was closed again.
    await all_closed()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung server)."""

    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        yield port
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("dependency", ["PostgreSQL", "Redis"])
async def test_hung_dependency_fails_within_bound(
    make_settings: Callable[..., Settings], silent_port: int, dependency: str
) -> None:
    # Connect timeouts far longer than the start-up bound: only that bound can end the wait.
    if dependency == "PostgreSQL":
        url = {
            "database": {
                "url": f"postgresql://u:{CANARY}@127.0.0.1:{silent_port}/d",
                "connect_timeout": 30,
            }
        }
    else:
        url = {
            "redis": {
                "url": f"redis://:{CANARY}@127.0.0.1:{silent_port}/0",
                "socket_connect_timeout": 30,
                "socket_timeout": 30,
            }
        }
    settings = make_settings(startup_timeout=1.0, **url)

    start = time.perf_counter()
    with pytest.raises(DependencyUnavailable) as info:
        async with Core(settings):
            pytest.fail("started although a dependency hangs")
    assert time.perf_counter() - start < settings.app.startup_timeout + SLACK
    assert f"{dependency} at " in str(info.value)
    assert f"127.0.0.1:{silent_port}" in str(info.value)
    assert CANARY not in str(info.value)


async def test_dependency_error_text_never_shows_the_secret() -> None:
    resource = Fake(name="svc", ping_failures=100, ping_error=f"password {CANARY} rejected")
    with pytest.raises(DependencyUnavailable) as info:
        await wait_until_ready("Service", resource, timeout=0.2, secrets=[CANARY], base_delay=0.01)
    assert "Service at fake://svc" in str(info.value)
    assert "rejected" in str(info.value)
    assert CANARY not in str(info.value)
    assert resource.pings >= 2
    # Every ping is counted once in the report.
    assert f"({resource.pings} attempts)" in str(info.value)


async def test_start_up_masks_the_settings_secrets_in_any_resources_error() -> None:
    # A resource of the app's own echoing a password the settings hold: the Core passes every
    # secret of its settings to the wait, not only those of the resource that failed.
    settings = Settings(
        _env_file=None,
        app={"startup_timeout": 0.3},
        database={"url": f"postgresql://app:{CANARY}@127.0.0.1:5432/app"},
    )
    failing = Fake(name="svc", ping_failures=1000, ping_error=f"login with {CANARY} refused")
    core = Core(settings, db=Fake(name="db"), redis=Fake(name="redis"), extra=[("Svc", failing)])  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable) as info:
        async with core:
            pytest.fail("started although a resource never answered")
    assert "Svc at fake://svc" in str(info.value)
    assert "refused" in str(info.value)
    assert CANARY not in str(info.value)


async def test_wait_until_ready_retries_transient_failures() -> None:
    resource = Fake(ping_failures=3)
    start = time.perf_counter()
    await wait_until_ready("Service", resource, timeout=2.0, base_delay=0.01, max_delay=0.05)
    assert resource.pings == 4
    assert time.perf_counter() - start < 1.0


async def test_failed_start_closes_what_had_started(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
) -> None:
    settings = make_settings()
    calls: list[str] = []
    db, redis = RecordingDatabase(settings, calls), RecordingRedis(settings, calls)
    broken = Fake(calls, name="broken", fail_start=True)
    lifespan = Core(settings, db=db, redis=redis, extra=[("Broken", broken)])

    # The one failure itself, not the task group that started the resources concurrently.
    with pytest.raises(Boom, match=r"^broken could not start$"):
        async with lifespan:
            pytest.fail("started although a resource failed")
    assert {"close PostgreSQL", "close Redis", "close broken"} <= set(calls)
    await all_closed()


async def test_failed_startup_hook_closes_everything(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
) -> None:
    settings = make_settings()
    db, redis = DatabaseManager(settings), RedisManager(settings)

    async def hook(started: Core) -> None:
        # Both dependencies are up when hooks run.
        assert started is lifespan
        await db.ping()
        await redis.ping()
        raise Boom("hook failed")

    lifespan = Core(settings, db=db, redis=redis, on_startup=[hook])
    with pytest.raises(Boom, match="hook failed"):
        async with lifespan:
            pytest.fail("started although a start-up hook failed")
    await all_closed()


# --- shutdown -------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["PostgreSQL", "Redis", "extra"])
async def test_shutdown_closes_all_when_one_close_fails(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
    probe: AsyncEngine,
    redis_client: aioredis.Redis,
    app_name: str,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    settings = make_settings()
    calls: list[str] = []
    db = RecordingDatabase(settings, calls, fail_close=failing == "PostgreSQL")
    redis = RecordingRedis(settings, calls, fail_close=failing == "Redis")
    extra = Fake(calls, name="extra", fail_close=failing == "extra")

    async with Core(settings, db=db, redis=redis, extra=[("Extra", extra)]):
        assert await _pg_backends(probe, app_name) > 0
        assert await _redis_clients(redis_client, app_name) > 0

    # Reverse start order, and every close ran although one raised.
    assert [c for c in calls if c.startswith("close")] == [
        "close extra",
        "close Redis",
        "close PostgreSQL",
    ]
    await all_closed()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    name = failing if failing != "extra" else "Extra"
    assert errors[0].getMessage() == f"closing {name} failed; closing the others anyway"
    assert errors[0].exc_info is not None


async def test_hung_close_is_bounded_and_others_still_close(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutdown_timeout = 0.3
    settings = make_settings(shutdown_timeout=shutdown_timeout)
    stuck = Fake(name="stuck", hang_close=True)
    lifespan = Core(
        settings,
        extra=[("Stuck", stuck)],
    )
    with anyio.fail_after(shutdown_timeout * 20 + 10):
        async with lifespan:
            start = time.perf_counter()
    took = time.perf_counter() - start
    # The hung close got its bound and no more; the others closed right after it.
    assert shutdown_timeout * 0.9 <= took < shutdown_timeout * 3 + SLACK, took
    assert "close stuck" in stuck.calls
    await all_closed()
    assert any("Stuck" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


# --- use as a framework lifespan ----------------------------------------------------------------


async def test_same_object_works_as_lifespan_of_app_and_again(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
) -> None:
    settings = make_settings()
    db, redis = DatabaseManager(settings), RedisManager(settings)
    lifespan = Core(settings, db=db, redis=redis)
    app = object()
    for _ in range(2):
        async with lifespan(app):
            assert isinstance(await db.ping(), float)
            assert isinstance(await redis.ping(), float)
            async with db.get_session() as session:
                assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        await all_closed()


async def test_startup_is_concurrent(make_settings: Callable[..., Settings]) -> None:
    # Each start returns only once all three have begun: started one after another, the first
    # would wait forever.
    begun: list[str] = []
    all_begun = anyio.Event()

    class Gathering(Fake):
        async def start(self) -> None:
            begun.append(self.name)
            if len(begun) == 3:
                all_begun.set()
            await all_begun.wait()

    settings = make_settings()
    lifespan = Core(
        settings,
        db=Gathering(name="a"),
        redis=Gathering(name="b"),
        extra=[("C", Gathering(name="c"))],
    )
    with anyio.fail_after(5):
        async with lifespan:
            pass
    assert sorted(begun) == ["a", "b", "c"]


async def test_health_reports_the_started_dependencies(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    lifespan = Core(
        settings,
        extra=[("Extra", Fake())],
    )
    async with lifespan:
        report = await lifespan.health.run()
    assert report.ready
    assert {c.name for c in report.checks} >= {"postgresql", "redis", "extra"}
    assert all(c.status == "ok" for c in report.checks)


async def test_shutdown_completes_when_the_host_task_is_cancelled(
    make_settings: Callable[..., Settings],
    all_closed: AllClosed,
) -> None:
    settings = make_settings()
    calls: list[str] = []
    lifespan = Core(
        settings, db=RecordingDatabase(settings, calls), redis=RecordingRedis(settings, calls)
    )
    running = anyio.Event()

    async def serve() -> None:
        async with lifespan:
            running.set()
            await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await running.wait()
            tg.cancel_scope.cancel()
    assert calls == ["close Redis", "close PostgreSQL"]
    await all_closed()


class _Pinged:
    """A resource whose pings fail with `errors` in turn, then answer."""

    safe_url = "fake://pinged"

    def __init__(self, *errors: BaseException, hang: bool = False) -> None:
        self.errors = list(errors)
        self.hang = hang
        self.pings = 0

    async def ping(self) -> float:
        self.pings += 1
        if self.hang:
            await anyio.sleep(60)
        if self.errors:
            raise self.errors.pop(0)
        return 0.001


async def test_each_retry_is_logged_with_the_cause_and_a_pause_within_the_bounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dualcore")
    resource = _Pinged(*(ConnectionRefusedError("starting") for _ in range(10)))
    await wait_until_ready("Redis", resource, timeout=10, base_delay=0.001, max_delay=0.004)
    assert resource.pings == 11
    lines = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
    assert len(lines) == 10
    for line in lines:
        # Full jitter below the cap: uncapped, the tenth pause could reach 0.5 s.
        match = re.fullmatch(
            r"Redis not ready \(ConnectionRefusedError\); retrying in (\S+)s",
            line,
        )
        assert match is not None, line
        assert float(match.group(1)) <= 0.004


async def test_the_pauses_start_from_the_base_delay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dualcore")
    resource = _Pinged(*(ConnectionRefusedError("starting") for _ in range(6)))
    await wait_until_ready("Redis", resource, timeout=10, base_delay=0.001, max_delay=10)
    pauses = [
        float(r.getMessage().rsplit(" ", 1)[1].rstrip("s"))
        for r in caplog.records
        if "not ready" in r.getMessage()
    ]
    # Doubling from 1 ms: the sixth pause is at most 32 ms (from the default 50 ms, up to 1.6 s).
    assert len(pauses) == 6
    assert max(pauses) <= 0.03


async def test_a_failure_that_will_not_heal_is_not_waited_for() -> None:
    # A refused password: the first answer is final, however long the start-up timeout.
    resource = _Pinged(PermissionError("password authentication failed"))
    start = time.perf_counter()
    with pytest.raises(DependencyUnavailable, match=r"\(1 attempt\)"):
        await wait_until_ready("Service", resource, timeout=30, base_delay=0.01)
    assert resource.pings == 1
    assert time.perf_counter() - start < 5


async def test_a_hung_ping_is_cut_off_at_the_overall_deadline() -> None:
    resource = _Pinged(hang=True)
    start = time.perf_counter()
    with pytest.raises(DependencyUnavailable):
        await wait_until_ready("Service", resource, timeout=0.2)
    # Cut at 0.2 s; a ping allowed to outlive the deadline would take at least a second.
    assert time.perf_counter() - start < 0.95
