"""One scenario suite for both adapters, driven through the example services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.runtime import Core
from tests.support.frameworks import FRAMEWORKS
from tests.support.scenario_apps import build_app

pytestmark = pytest.mark.anyio


def make_settings(
    database_url: str, redis_url: str, schema: str, prefix: str, **db: Any
) -> Settings:
    return Settings(
        app={"name": f"dcscn-{uuid.uuid4().hex[:8]}", "environment": "development"},
        database={"url": database_url, "search_path": schema, "pool_size": 3, **db},
        redis={"url": redis_url, "key_prefix": prefix},
    )


async def _create_tables(core: Core) -> None:
    from examples.users.models import Base

    await core.db.create_all(Base.metadata)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def core(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> AsyncIterator[Core]:
    settings = make_settings(database_url, redis_url, pg_schema, key_prefix, max_overflow=0)
    lifespan = Core(
        settings,
        on_startup=[_create_tables],
    )
    async with lifespan:
        yield lifespan


@pytest.fixture
async def client(framework: str, core: Core) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(framework, core)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _idle_in_transaction(core: Core) -> int:
    name = core.settings.app.name
    async with core.db.read_engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = :n AND state LIKE 'idle in transaction%'"
            ),
            {"n": name},
        )
        return int(result.scalar_one())


def _checked_out(core: Core) -> int:
    return core.db.engine.pool.checkedout() + core.db.read_engine.pool.checkedout()  # type: ignore[attr-defined]


async def test_crud_round_trip(client: httpx.AsyncClient) -> None:
    created = await client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert created.status_code == 201, created.text
    user = created.json()
    uid = user["id"]

    got = await client.get(f"/users/{uid}")
    assert got.status_code == 200
    assert got.json() == user

    cached1 = await client.get(f"/users/{uid}/cached")
    cached2 = await client.get(f"/users/{uid}/cached")
    assert cached1.json() == cached2.json() == user

    patched = await client.patch(f"/users/{uid}", json={"name": "Ada L."})
    assert patched.status_code == 200
    assert patched.json()["name"] == "Ada L."
    # The update invalidated the cached copy.
    assert (await client.get(f"/users/{uid}/cached")).json()["name"] == "Ada L."

    for i in range(4):
        r = await client.post("/users", json={"email": f"u{i}@example.com", "name": f"U{i}"})
        assert r.status_code == 201
    page1 = (await client.get("/users", params={"limit": 2})).json()
    assert len(page1["items"]) == 2
    assert page1["next_offset"] == 2
    seen = [u["id"] for u in page1["items"]]
    offset = page1["next_offset"]
    while offset is not None:
        page = (await client.get("/users", params={"limit": 2, "offset": offset})).json()
        seen += [u["id"] for u in page["items"]]
        offset = page["next_offset"]
    assert len(seen) == len(set(seen)) == 5

    deleted = await client.delete(f"/users/{uid}")
    assert deleted.status_code == 204
    assert (await client.get(f"/users/{uid}")).status_code == 404
    assert (await client.get(f"/users/{uid}/cached")).status_code == 404
    assert (await client.delete(f"/users/{uid}")).status_code == 404


async def test_invalid_input_is_rejected_and_nothing_written(
    client: httpx.AsyncClient, core: Core
) -> None:
    bad = await client.post("/users", json={"email": "not-an-email", "name": ""})
    assert 400 <= bad.status_code < 500
    assert (await client.get("/users")).json()["items"] == []
    assert (await client.get("/users/not-a-uuid")).status_code in (400, 404, 422)


async def test_commit_failure_is_409_and_nothing_persisted(
    client: httpx.AsyncClient, core: Core
) -> None:
    first = await client.post("/users", json={"email": "dup@example.com", "name": "One"})
    assert first.status_code == 201
    # The unique constraint is deferred: the duplicate is only caught by COMMIT.
    second = await client.post("/users", json={"email": "dup@example.com", "name": "Two"})
    assert second.status_code == 409, second.text
    async with core.db.get_session(read_only=True) as session:
        names = (await session.execute(text("SELECT name FROM users"))).scalars().all()
    assert names == ["One"]
    assert _checked_out(core) == 0


async def _wait_until(check: Callable[[], Awaitable[bool]], what: str, bound: float = 20) -> None:
    """Poll `check` until it holds; the bound only catches a hang, it orders nothing."""
    try:
        with anyio.fail_after(bound):
            while not await check():  # noqa: ASYNC110 - the server's state has no event to wait on
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def _sleeping(core: Core) -> int:
    """Statements of this app now inside pg_sleep on the server."""
    async with core.db.read_engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                "AND state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
            ),
            {"n": core.settings.app.name},
        )
        return int(result.scalar_one())


async def test_cancelled_request_leaves_no_connection(
    client: httpx.AsyncClient, core: Core
) -> None:
    tasks = [asyncio.ensure_future(client.get("/slow", params={"seconds": 30})) for _ in range(3)]

    async def all_sleeping() -> bool:
        return await _sleeping(core) == 3

    await _wait_until(all_sleeping, "three requests inside their query")
    assert _checked_out(core) == 3
    for t in tasks:
        t.cancel()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t
    assert _checked_out(core) == 0

    async def nothing_left() -> bool:
        return await _idle_in_transaction(core) == 0 and await _sleeping(core) == 0

    # The server notices the cancelled statements on its own schedule.
    await _wait_until(nothing_left, "server-side sessions gone")


async def test_client_gone_while_the_query_runs_leaves_no_connection(
    framework: str, core: Core
) -> None:
    app = build_app(framework, core)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/slow",
        "raw_path": b"/slow",
        "root_path": "",
        "query_string": b"seconds=1",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        # The client hangs up while the request's query is running on the server.
        async def query_running() -> bool:
            return await _sleeping(core) == 1

        await _wait_until(query_running, "the request's query running")
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        # ASGI 2.4: sending to a client that has gone raises OSError.
        raise OSError("client went away")

    with pytest.raises(Exception) as raised:  # noqa: PT011 - narrowed below
        await app(scope, receive, send)
    # Each framework reports the failed send its own way, always caused by the send's error.
    chain: list[BaseException] = []
    link: BaseException | None = raised.value
    while link is not None and len(chain) < 5:
        chain.append(link)
        link = link.__cause__ or link.__context__
    assert any(isinstance(e, OSError) and str(e) == "client went away" for e in chain), chain
    # The one attempt to answer was the handler's own response: no second start was tried.
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert sent[0]["status"] == 200
    assert _checked_out(core) == 0
    assert await _idle_in_transaction(core) == 0


async def test_pool_exhaustion_answers_503_with_retry_after(
    framework: str, database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> None:
    pool_timeout = 0.3
    hold_for = 4.0
    settings = make_settings(
        database_url,
        redis_url,
        pg_schema,
        key_prefix,
        pool_size=1,
        max_overflow=0,
        pool_timeout=pool_timeout,
    )
    core = Core(settings)
    async with core:
        app = build_app(framework, core)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            hold = asyncio.ensure_future(c.get("/slow", params={"seconds": hold_for}))

            async def holding() -> bool:
                return await _sleeping(core) == 1

            await _wait_until(holding, "the only connection held")
            loop = asyncio.get_running_loop()
            started = loop.time()
            busy = await c.get("/slow", params={"seconds": 0})
            # Refused after the pool wait, not after the holder let go.
            assert loop.time() - started < hold_for / 2
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
            assert busy.json()["dependency"] == "database"
            assert (await hold).status_code == 200
            # Recovered once the pool frees up.
            assert (await c.get("/slow", params={"seconds": 0})).status_code == 200


async def test_database_down_answers_503(framework: str, redis_url: str, key_prefix: str) -> None:
    settings = Settings(
        app={"name": "dcscn-down"},
        database={"url": "postgresql://postgres:pw-CANARY@127.0.0.1:1/x", "connect_timeout": 1},
        redis={"url": redis_url, "key_prefix": key_prefix},
    )
    # Deliberately not started: requests find the database unreachable.
    core = Core(settings)
    app = build_app(framework, core)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get(f"/users/{uuid.uuid4()}")
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert r.json() == {
                "detail": "Service temporarily unavailable",
                "dependency": "database",
            }
            assert "CANARY" not in r.text
            ready = await c.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["postgresql"]["status"] in ("fail", "timeout")
            assert "CANARY" not in ready.text
    finally:
        await core.db.close()
        await core.redis.close()


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"postgresql", "redis"}
    assert all(c["status"] == "ok" for c in body["checks"].values())


async def test_readiness_follows_a_private_redis(
    framework: str, tmp_path: Path, database_url: str, pg_schema: str
) -> None:
    from core.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = make_settings(database_url, server.url, pg_schema, "scn:")
        core = Core(settings)
        async with core:
            app = build_app(framework, core)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                assert (await c.get("/health/ready")).status_code == 200
                await asyncio.to_thread(server.stop)

                async def reports(status: int) -> bool:
                    return (await c.get("/health/ready")).status_code == status

                # A report is reused for a moment (health coalescing), so the change shows
                # within that moment plus one run of the checks.
                await _wait_until(lambda: reports(503), "readiness reports Redis down")
                down = await c.get("/health/ready")
                assert down.status_code == 503
                checks = down.json()["checks"]
                assert checks["redis"]["status"] in ("fail", "timeout")
                assert checks["postgresql"]["status"] == "ok"
                await asyncio.to_thread(server.start)
                await _wait_until(lambda: reports(200), "readiness reports Redis back")
                assert (await c.get("/health/ready")).status_code == 200


async def test_dependency_override(framework: str, core: Core) -> None:
    """Each framework's own override mechanism replaces a core-provided dependency."""
    used: list[str] = []

    async def tracked_read_session() -> AsyncIterator[AsyncSession]:
        used.append("override")
        async with core.db.get_session(read_only=True) as session:
            yield session

    if framework == "fastapi":
        from examples.fastapi_app import create_app
        from integrations.fastapi import get_read_db

        app = create_app(core)
        app.dependency_overrides[get_read_db] = tracked_read_session
    else:
        from litestar.di import Provide

        from examples.litestar_app import create_app as create_litestar

        app = create_litestar(core, dependencies={"read_session": Provide(tracked_read_session)})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/users")).status_code == 200
    assert used == ["override"]
