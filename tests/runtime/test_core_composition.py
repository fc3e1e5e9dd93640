"""Core as composition root: the ASGI layers it adds, the wiring it refuses, nested entries that
share one start, and the cache metrics it connects at start-up."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from core.config import Settings
from core.observability import ObservabilityMiddleware
from core.observability.metrics import metrics_response
from core.redis_client import RedisManager
from core.runtime import Core, DependencyUnavailable
from core.unit_of_work import UnitOfWorkMiddleware

pytestmark = pytest.mark.anyio


class Recorded:
    """A resource that records its start and close in a shared list."""

    def __init__(self, calls: list[str], name: str) -> None:
        self.calls = calls
        self.name = name

    @property
    def safe_url(self) -> str:
        return f"fake://{self.name}"

    async def start(self) -> None:
        self.calls.append(f"start {self.name}")

    async def ping(self) -> float:
        return 0.0

    async def close(self) -> None:
        self.calls.append(f"close {self.name}")


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that is never called: only the layering around it is inspected."""


@pytest.fixture
def make_settings(database_url: str, redis_url: str, app_name: str) -> Callable[..., Settings]:
    def make(
        *, redis: dict[str, Any] | None = None, observability: dict[str, Any] | None = None
    ) -> Settings:
        return Settings(
            _env_file=None,
            app={"name": app_name, "startup_timeout": 5.0},
            observability=observability or {},
            database={"url": database_url, "pool_size": 2},
            redis={"url": redis_url, **(redis or {})},
        )

    return make


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _cache_events(core: Core) -> dict[tuple[str, str], float]:
    """`cache_events_total` samples of the core's metrics, by (cache, event)."""
    body, _ = metrics_response(core.metrics)
    return {
        (dict(labels)["cache"], dict(labels)["event"]): value
        for (name, labels), value in _samples(body).items()
        if name == "cache_events_total"
    }


async def _answers(port: int) -> bool:
    """Whether anything accepts connections on the local `port`."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


# --- ASGI layers ----------------------------------------------------------------------------------


def test_wrap_asgi_with_both_layers_left_out_returns_the_app_itself(
    make_settings: Callable[..., Settings],
) -> None:
    # An adapter that adds both layers elsewhere must not get them twice.
    core = Core(make_settings())
    assert core.wrap_asgi(plain_app, observability=False, unit_of_work=False) is plain_app


def test_wrap_asgi_adds_only_the_layers_asked_for(make_settings: Callable[..., Settings]) -> None:
    core = Core(make_settings())

    only_uow = core.wrap_asgi(plain_app, observability=False)
    assert isinstance(only_uow, UnitOfWorkMiddleware)
    assert only_uow.app is plain_app

    only_obs = core.wrap_asgi(plain_app, unit_of_work=False)
    assert isinstance(only_obs, ObservabilityMiddleware)
    assert only_obs.app is plain_app

    both = core.wrap_asgi(plain_app)
    assert isinstance(both, ObservabilityMiddleware)
    assert isinstance(both.app, UnitOfWorkMiddleware)
    assert both.app.app is plain_app


# --- wiring ---------------------------------------------------------------------------------------


def test_an_app_wired_to_another_core_is_refused_with_the_remedy(
    make_settings: Callable[..., Settings],
) -> None:
    # The operator reads this at start-up: it must say what is wrong and what to pass instead.
    settings = make_settings()
    wired, other = Core(settings), Core(settings)
    app = SimpleNamespace(state=SimpleNamespace(dualcore=wired))
    with pytest.raises(RuntimeError) as raised:
        other(app)
    assert str(raised.value) == (
        "the app runs a different Core from the one it was wired with: pass the same "
        "instance to the app's lifespan and to install()/CorePlugin (or only to the latter)"
    )


def test_an_app_wired_to_this_core_is_accepted(make_settings: Callable[..., Settings]) -> None:
    core = Core(make_settings())
    app = SimpleNamespace(state=SimpleNamespace(dualcore=core))
    core(app)


# --- nested entries -------------------------------------------------------------------------------


async def test_nested_entries_share_one_start_and_only_the_outermost_exit_closes(
    make_settings: Callable[..., Settings],
) -> None:
    # An adapter's wiring, the app's lifespan and a combined lifespan may all enter the same core:
    # an inner exit must not close the dependencies the outer ones still use.
    calls: list[str] = []
    core = Core(make_settings(), db=Recorded(calls, "db"), redis=Recorded(calls, "redis"))
    started = ["start db", "start redis"]
    closed = ["close redis", "close db"]
    for _ in range(2):
        calls.clear()
        async with core:
            async with core:
                async with core(object()):
                    assert sorted(calls) == started
                assert sorted(calls) == started
            assert sorted(calls) == started
        assert sorted(calls[:2]) == started
        assert calls[2:] == closed


# --- metrics wiring -------------------------------------------------------------------------------


async def test_started_core_counts_the_default_caches_events_in_its_metrics(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    core = Core(make_settings(redis={"key_prefix": key_prefix}))

    async def load() -> dict[str, int]:
        return {"id": 1}

    async with core:
        cache = core.redis.cache
        assert await cache.get_or_set("item:1", load, ttl=30) == {"id": 1}
        assert await cache.get_or_set("item:1", load, ttl=30) == {"id": 1}
        events = _cache_events(core)
    assert events[("default", "hits")] == 1.0
    assert events[("default", "loader_calls")] == 1.0
    assert {cache for cache, _ in events} == {"default"}


async def test_a_cache_hook_set_before_start_is_kept(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    # An application that routes cache events to its own hook must not lose them to the core's.
    settings = make_settings(redis={"key_prefix": key_prefix})
    seen: list[str] = []

    def hook(event: str, value: float = 1.0) -> None:
        seen.append(event)

    redis = RedisManager(settings)
    redis.cache_metrics = hook
    core = Core(settings, redis=redis)

    async def load() -> int:
        return 7

    async with core:
        assert redis.cache_metrics is hook
        assert await redis.cache.get_or_set("n", load, ttl=30) == 7
        assert await redis.cache.get_or_set("n", load, ttl=30) == 7
        events = _cache_events(core)
    assert seen.count("hits") == 1
    assert seen.count("loader_calls") == 1
    assert not any(value for value in events.values())


# --- start-up failures and switches ---------------------------------------------------------------


def test_a_text_cause_is_stated_with_the_attempts_and_leaves_no_diagnosis() -> None:
    # Callers branch on `diagnosis`: a plain message must not pose as a structured diagnosis.
    error = DependencyUnavailable("Search", "fake://search", 1.0, 2, "no route")
    assert error.diagnosis is None
    assert (
        str(error) == "Search at fake://search is not reachable after 1.0s (2 attempts): no route"
    )
    single = DependencyUnavailable("Search", "fake://search", 0.5, 1, "no route")
    assert (
        str(single) == "Search at fake://search is not reachable after 0.5s (1 attempt): no route"
    )


async def test_a_dependency_error_wins_over_another_resources_failure(
    make_settings: Callable[..., Settings],
) -> None:
    # When one dependency is unreachable and another fails on its own, the operator gets the
    # named dependency error, not an exception group around both.
    refused = anyio.Event()

    class Refusing(Recorded):
        async def ping(self) -> float:
            refused.set()
            raise ValueError("wrong credentials")

    class FailingLater(Recorded):
        async def start(self) -> None:
            # Shielded so that it still fails after the other task's error cancelled the group.
            with anyio.CancelScope(shield=True):
                await refused.wait()
            raise RuntimeError("broken on its own")

    calls: list[str] = []
    core = Core(make_settings(), db=Refusing(calls, "db"), redis=FailingLater(calls, "redis"))
    with anyio.fail_after(10), pytest.raises(DependencyUnavailable) as raised:
        async with core:
            pass
    assert raised.value.dependency == "PostgreSQL"


async def test_a_metrics_port_is_not_served_while_metrics_are_disabled(
    make_settings: Callable[..., Settings], closed_port: int
) -> None:
    calls: list[str] = []
    settings = make_settings(
        observability={
            "metrics_enabled": False,
            "metrics_port": closed_port,
            "metrics_host": "127.0.0.1",
        }
    )
    core = Core(settings, db=Recorded(calls, "db"), redis=Recorded(calls, "redis"))
    async with core:
        assert not await _answers(closed_port)
    assert sorted(calls) == ["close db", "close redis", "start db", "start redis"]


async def test_tracing_starts_with_stand_in_managers(
    make_settings: Callable[..., Settings],
) -> None:
    # Stand-ins have no engines or Redis client to instrument; tracing must skip them.
    from opentelemetry.sdk.trace import TracerProvider

    calls: list[str] = []
    core = Core(
        make_settings(observability={"tracing": True}),
        db=Recorded(calls, "db"),
        redis=Recorded(calls, "redis"),
        tracer_provider=TracerProvider(),
    )
    async with core:
        pass
    assert sorted(calls) == ["close db", "close redis", "start db", "start redis"]


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metrics_port_serves_the_configured_path_and_logs_where(
    make_settings: Callable[..., Settings], free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Operators point their scraper at the address in this log line, so it must be exact.
    settings = make_settings(
        observability={
            "metrics_port": free_port,
            "metrics_host": "127.0.0.1",
            "metrics_path": "/internal/metrics",
        }
    )
    calls: list[str] = []
    core = Core(settings, db=Recorded(calls, "db"), redis=Recorded(calls, "redis"))
    url = f"http://127.0.0.1:{free_port}/internal/metrics"
    with caplog.at_level(logging.INFO, logger="dualcore.lifespan"):
        async with core, httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 200
            other = await client.get(f"http://127.0.0.1:{free_port}/metrics")
            assert other.status_code == 404
    messages = [r.getMessage() for r in caplog.records if r.name == "dualcore.lifespan"]
    assert f"metrics served at {url}" in messages
    assert not await _answers(free_port)
