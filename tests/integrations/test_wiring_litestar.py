"""One plugin wires a Litestar app: the `cache` and `core` dependencies and `get_core`, the core
started once even when the app also names it as a lifespan, and a different `Core` refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from litestar import Litestar, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.testing import TestClient

from core import Core, Settings
from core.cache import Cache
from integrations.litestar import CorePlugin, get_core


@pytest.fixture
def settings(database_url: str, redis_url: str, key_prefix: str) -> Settings:
    return Settings(
        app={"name": f"dcwire-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "pool_size": 2},
        redis={"url": redis_url, "key_prefix": key_prefix},
    )


class StartCounter:
    """An `on_startup` hook that counts how often the core really started."""

    def __init__(self) -> None:
        self.starts = 0

    async def __call__(self, core: Core) -> None:
        self.starts += 1


@get("/cached/{name:str}")
async def cached(
    name: FromPath[str],
    cache: NamedDependency[Cache],
    core: NamedDependency[Core],
    request: Request[Any, Any, Any],
) -> dict[str, Any]:
    async def load() -> dict[str, str]:
        return {"loaded": name}

    return {
        "value": await cache.get_or_set(("wired", name), load, ttl=30),
        "is_core_cache": cache is core.redis.cache,
        "get_core_agrees": get_core(request) is core,
    }


def test_cache_and_core_dependencies(settings: Settings) -> None:
    counter = StartCounter()
    core = Core(settings, on_startup=[counter])
    app = Litestar(route_handlers=[cached], plugins=[CorePlugin(core)])
    with TestClient(app) as client:
        first = client.get("/cached/a").json()
        again = client.get("/cached/a").json()
    assert first == {"value": {"loaded": "a"}, "is_core_cache": True, "get_core_agrees": True}
    assert again == first
    assert counter.starts == 1


def test_the_core_named_as_lifespan_too_starts_once(settings: Settings) -> None:
    counter = StartCounter()
    core = Core(settings, on_startup=[counter])
    app = Litestar(route_handlers=[cached], lifespan=[core], plugins=[CorePlugin(core)])
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
    assert counter.starts == 1


def test_a_different_core_as_lifespan_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="different Core"):
        Litestar(
            route_handlers=[cached],
            lifespan=[Core(settings)],
            plugins=[CorePlugin(Core(settings))],
        )
