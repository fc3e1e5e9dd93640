"""The seed design's own usage, run on both frameworks: whichever way a handler gets its session,
a write that did not commit is never answered 2xx, and nothing of it is stored."""

from __future__ import annotations

from typing import Any

import pytest

from core import Core
from tests.support.frameworks import FRAMEWORKS
from tests.support.seed_http import seed_client, stored
from tests.support.seed_models import TAKEN, SeedUser

pytestmark = pytest.mark.anyio


def _app_module(framework: str) -> Any:
    if framework == "fastapi":
        from tests.support import seed_fastapi

        return seed_fastapi
    from tests.support import seed_litestar

    return seed_litestar


def _cases() -> list[tuple[str, str]]:
    return [(f, style) for f in FRAMEWORKS for style in _app_module(f).STYLES]


def _body(email: str, also: str, fail: str = "") -> dict[str, str]:
    return {"email": email, "also": also, "fail": fail}


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_clean_write_is_committed_before_the_answer(
    seed_core: Core, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(seed_core)
    async with seed_client(app) as client:
        r = await client.post(f"/write/{style}", json=_body("new1@x.org", "new2@x.org"))
        assert r.status_code == 200, r.text
        assert r.json() == {"written": True}
        # Read while the client still holds the answer: the rows are already there.
        assert await stored(seed_core, "new1@x.org", "new2@x.org") == 2


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_commit_refused_by_a_deferred_constraint_is_409_and_stores_nothing(
    seed_core: Core, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(seed_core)
    async with seed_client(app) as client:
        r = await client.post(f"/write/{style}", json=_body(TAKEN, "kept-nothing@x.org"))
    assert r.status_code == 409, r.text
    assert r.json() == {"detail": "Conflict with the current state of the resource"}
    # A constraint violation is the request's fault, not the database's.
    assert seed_core.db.breaker.snapshot().consecutive_failures == 0
    assert await stored(seed_core, "kept-nothing@x.org") == 0
    assert await stored(seed_core, TAKEN) == 1


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_commit_whose_connection_is_lost_is_503_and_stores_nothing(
    seed_core: Core, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(seed_core)
    async with seed_client(app) as client:
        r = await client.post(
            f"/write/{style}", json=_body("lost1@x.org", "lost2@x.org", "terminate")
        )
    assert r.status_code == 503, r.text
    assert r.json() == {"detail": "Service temporarily unavailable", "dependency": "database"}
    assert int(r.headers["retry-after"]) >= 1
    # A lost connection is the database's failure: the breaker saw it (read before the next
    # session's success resets the count).
    assert seed_core.db.breaker.snapshot().consecutive_failures == 1
    assert await stored(seed_core, "lost1@x.org", "lost2@x.org") == 0


@pytest.mark.parametrize(("framework", "style"), _cases())
async def test_a_handler_that_raises_after_writing_is_rolled_back(
    seed_core: Core, framework: str, style: str
) -> None:
    app = _app_module(framework).build_app(seed_core)
    async with seed_client(app) as client:
        r = await client.post(f"/write/{style}", json=_body("gone1@x.org", "gone2@x.org", "raise"))
    assert r.status_code == 500
    assert await stored(seed_core, "gone1@x.org", "gone2@x.org") == 0
    assert seed_core.db.breaker.snapshot().consecutive_failures == 0
    assert seed_core.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_seed_router_and_cached_service(seed_core: Core, framework: str) -> None:
    async with seed_core.db.get_session() as s:
        user = SeedUser(email="ada@x.org", name="Ada")
        s.add(user)
        await s.flush()
        user_id = user.id
    app = _app_module(framework).build_app(seed_core)
    async with seed_client(app) as client:
        first = await client.get(f"/users/{user_id}")
        second = await client.get(f"/users/{user_id}")
        missing = await client.get("/users/999999")
    assert first.status_code == 200
    assert first.json() == {"id": user_id, "email": "ada@x.org", "name": "Ada"}
    assert second.json() == {**first.json(), "cached": True}
    assert missing.status_code == 404


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_health_is_the_readiness_report(seed_core: Core, framework: str) -> None:
    module = _app_module(framework)
    kwargs = {"own_health": False} if framework == "fastapi" else {}
    app = module.build_app(seed_core, **kwargs)
    async with seed_client(app) as client:
        health = await client.get("/health")
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
    assert health.status_code == ready.status_code == 200
    assert health.json()["status"] == ready.json()["status"] == "ok"
    assert set(health.json()) == set(ready.json())
    assert set(health.json()["checks"]) == set(ready.json()["checks"]) == {"postgresql", "redis"}
    assert live.status_code == 200
