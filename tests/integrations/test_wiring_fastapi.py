"""One call wires a FastAPI app: `install(app, core)` runs the core around the app's own
lifespan, the explicit seed form still works, and a second, different `Core` is refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text

from core import Core, Settings, combine_lifespans
from core.cache import Cache as CacheClass
from integrations.fastapi import (
    Cache,
    DbSession,
    ReadDbConnection,
    ReadDbSession,
    RedisClient,
    get_core,
    install,
)


@pytest.fixture
def settings(database_url: str, redis_url: str, key_prefix: str) -> Settings:
    return Settings(
        app={"name": f"dcwire-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "pool_size": 2},
        redis={"url": redis_url, "key_prefix": key_prefix},
    )


def _client(app: FastAPI) -> Any:
    # Imported here: Starlette's test client warns on import, and the fault session, which
    # collects this module but runs none of it, turns every warning into an error.
    from fastapi.testclient import TestClient

    return TestClient(app)


class StartCounter:
    """An `on_startup` hook that counts how often the core really started."""

    def __init__(self) -> None:
        self.starts = 0

    async def __call__(self, core: Core) -> None:
        self.starts += 1


@pytest.fixture
def counter() -> StartCounter:
    return StartCounter()


@pytest.fixture
def core(settings: Settings, counter: StartCounter) -> Core:
    return Core(settings, on_startup=[counter])


def _with_routes(app: FastAPI) -> FastAPI:
    @app.post("/items/{name}")
    async def add(name: str, db: DbSession) -> dict[str, str]:
        await db.execute(text("CREATE TEMP TABLE IF NOT EXISTS wired (name text)"))
        await db.execute(text("INSERT INTO wired VALUES (:n)"), {"n": name})
        return {"added": name}

    @app.get("/cached/{name}")
    async def cached(name: str, cache: Cache, core: Core = Depends(get_core)) -> dict[str, Any]:
        async def load() -> dict[str, str]:
            return {"loaded": name}

        return {
            "value": await cache.get_or_set(("wired", name), load, ttl=30),
            "is_core_cache": cache is core.redis.cache,
            "cache_type": type(cache).__name__,
        }

    return app


def test_install_alone_runs_the_core_around_the_apps_own_lifespan(
    core: Core, counter: StartCounter
) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        # The core is up before the app's own start-up and still up at its shutdown.
        await core.db.ping()
        seen.append("own start")
        yield
        await core.redis.ping()
        seen.append("own stop")

    app = _with_routes(FastAPI(lifespan=own))
    install(app, core)
    with _client(app) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/items/a").json() == {"added": "a"}
        body = client.get("/cached/a").json()
    assert body == {"value": {"loaded": "a"}, "is_core_cache": True, "cache_type": "Cache"}
    assert seen == ["own start", "own stop"]
    assert counter.starts == 1
    assert body["cache_type"] == CacheClass.__name__


def test_install_without_any_lifespan_is_enough(core: Core, counter: StartCounter) -> None:
    app = _with_routes(FastAPI())
    install(app, core)
    with _client(app) as client:
        assert client.post("/items/b").status_code == 200
        assert client.get("/health/ready").json()["status"] == "ok"
    assert counter.starts == 1


def test_the_explicit_seed_form_starts_the_core_once(core: Core, counter: StartCounter) -> None:
    app = _with_routes(FastAPI(lifespan=core))
    install(app, core)
    with _client(app) as client:
        assert client.post("/items/c").status_code == 200
    assert counter.starts == 1


def test_the_core_inside_combined_lifespans_is_started_once(
    core: Core, counter: StartCounter
) -> None:
    entered: list[str] = []

    @asynccontextmanager
    async def mine(app: Any) -> AsyncIterator[None]:
        entered.append("mine")
        yield

    app = _with_routes(FastAPI(lifespan=combine_lifespans(core, mine)))
    install(app, core)
    with _client(app) as client:
        assert client.post("/items/d").status_code == 200
    assert counter.starts == 1
    assert entered == ["mine"]


def test_a_different_core_in_the_apps_lifespan_is_refused_at_install(
    settings: Settings, core: Core
) -> None:
    app = FastAPI(lifespan=Core(settings))
    with pytest.raises(ValueError, match="different Core"):
        install(app, core)


def test_a_different_core_hidden_in_combined_lifespans_is_refused_at_start(
    settings: Settings, core: Core, counter: StartCounter
) -> None:
    other = StartCounter()
    app = FastAPI(lifespan=combine_lifespans(Core(settings, on_startup=[other])))
    install(app, core)
    with pytest.raises(RuntimeError, match="different Core"), _client(app):
        pass
    # The wired core started and was closed again; the stray one never started.
    assert (counter.starts, other.starts) == (1, 0)


def test_installing_twice_is_refused(core: Core) -> None:
    app = FastAPI()
    install(app, core)
    with pytest.raises(ValueError, match="already"):
        install(app, core)


def test_no_dependency_of_the_adapter_runs_in_the_thread_pool(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a plain-function dependency in its thread pool: a thread hop per request."""
    import anyio.to_thread

    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    app = FastAPI()
    install(app, core)

    @app.get("/everything")
    async def everything(
        db: DbSession,
        read: ReadDbSession,
        conn: ReadDbConnection,
        redis: RedisClient,
        cache: Cache,
        found: Core = Depends(get_core),
    ) -> dict[str, bool]:
        return {"same_core": found is core and cache is core.redis.cache}

    with _client(app) as client:
        hops.clear()  # start-up may use threads of its own
        response = client.get("/everything")
    assert response.json() == {"same_core": True}
    assert hops == []
