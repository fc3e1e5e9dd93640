"""The seed design's own usage, run on both frameworks: whichever way a handler gets its session,
a write that did not commit is never answered 2xx, and nothing of it is stored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core import DatabaseManager, Lifespan, RedisManager, Settings
from tests.conftest import FRAMEWORKS
from tests.seed_models import TAKEN, SeedUser

pytestmark = pytest.mark.anyio


def _app_module(framework: str) -> Any:
    if framework == "fastapi":
        from tests import seed_fastapi

        return seed_fastapi
    from tests import seed_litestar

    return seed_litestar


def _cases() -> list[tuple[str, str]]:
    return [(f, style) for f in FRAMEWORKS for style in _app_module(f).STYLES]


@pytest.fixture
async def core(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> AsyncIterator[Lifespan]:
    settings = Settings(
        app={"name": f"dcseed-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "search_path": pg_schema, "pool_size": 2},
        redis={"url": redis_url, "key_prefix": key_prefix},
        resilience={"breaker_failure_threshold": 2},
    )
    async with Lifespan(DatabaseManager(settings), RedisManager(settings), settings=settings) as c:
        await c.db.create_all(SeedUser.metadata)
        async with c.db.get_session() as session:
            session.add(SeedUser(email=TAKEN, name="first"))
        yield c


def _client(app: Any) -> httpx.AsyncClient:
    # The app's own 500 is what the test looks at, not an exception re-raised into the client.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def _stored(core: Lifespan, *emails: str) -> int:
    async with core.db.get_session(read_only=True) as s:
        query = select(func.count()).select_from(SeedUser).where(SeedUser.email.in_(emails))
        return int(await s.scalar(query) or 0)


def _body(email: str, also: str, fail: str = "") -> dict[str, str]:
    return {"email": email, "also": also, "fail": fail}


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_clean_write_is_committed_before_the_answer(
    core: Lifespan, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(core)
    async with _client(app) as client:
        r = await client.post(f"/write/{style}", json=_body("new1@x.org", "new2@x.org"))
        assert r.status_code == 200, r.text
        assert r.json() == {"written": True}
        # Read while the client still holds the answer: the rows are already there.
        assert await _stored(core, "new1@x.org", "new2@x.org") == 2


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_commit_refused_by_a_deferred_constraint_is_409_and_stores_nothing(
    core: Lifespan, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(core)
    async with _client(app) as client:
        r = await client.post(f"/write/{style}", json=_body(TAKEN, "kept-nothing@x.org"))
    assert r.status_code == 409, r.text
    assert r.json() == {"detail": "Conflict with the current state of the resource"}
    # A constraint violation is the request's fault, not the database's.
    assert core.db.breaker.snapshot().consecutive_failures == 0
    assert await _stored(core, "kept-nothing@x.org") == 0
    assert await _stored(core, TAKEN) == 1


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_commit_whose_connection_is_lost_is_503_and_stores_nothing(
    core: Lifespan, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(core)
    async with _client(app) as client:
        r = await client.post(
            f"/write/{style}", json=_body("lost1@x.org", "lost2@x.org", "terminate")
        )
    assert r.status_code == 503, r.text
    assert r.json() == {"detail": "Service temporarily unavailable", "dependency": "database"}
    assert int(r.headers["retry-after"]) >= 1
    # A lost connection is the database's failure: the breaker saw it (read before the next
    # session's success resets the count).
    assert core.db.breaker.snapshot().consecutive_failures == 1
    assert await _stored(core, "lost1@x.org", "lost2@x.org") == 0


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_handler_that_raises_after_writing_is_rolled_back(
    core: Lifespan, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(core)
    async with _client(app) as client:
        r = await client.post(f"/write/{style}", json=_body("gone1@x.org", "gone2@x.org", "raise"))
    assert r.status_code == 500
    assert await _stored(core, "gone1@x.org", "gone2@x.org") == 0
    assert core.db.breaker.snapshot().consecutive_failures == 0
    assert core.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_seed_router_and_cached_service(core: Lifespan, framework: str) -> None:
    async with core.db.get_session() as s:
        user = SeedUser(email="ada@x.org", name="Ada")
        s.add(user)
        await s.flush()
        user_id = user.id
    app = _app_module(framework).build_app(core)
    async with _client(app) as client:
        first = await client.get(f"/users/{user_id}")
        second = await client.get(f"/users/{user_id}")
        missing = await client.get("/users/999999")
    assert first.status_code == 200
    assert first.json() == {"id": user_id, "email": "ada@x.org", "name": "Ada"}
    assert second.json() == {**first.json(), "cached": True}
    assert missing.status_code == 404


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_health_is_the_readiness_report(core: Lifespan, framework: str) -> None:
    module = _app_module(framework)
    kwargs = {"own_health": False} if framework == "fastapi" else {}
    app = module.build_app(core, **kwargs)
    async with _client(app) as client:
        health = await client.get("/health")
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
    assert health.status_code == ready.status_code == 200
    assert health.json()["status"] == ready.json()["status"] == "ok"
    assert set(health.json()) == set(ready.json())
    assert set(health.json()["checks"]) == set(ready.json()["checks"]) == {"postgresql", "redis"}
    assert live.status_code == 200
