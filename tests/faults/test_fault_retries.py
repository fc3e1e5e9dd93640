"""A dead dependency costs a bounded number of connection attempts, counted by a proxy in front
of it: start-up waits on a capped retry policy, and under load the breakers stop the stampede."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import anyio
import pytest

from core.config import Settings
from core.runtime import Core, DependencyUnavailable
from tests.faults.harness import (
    SLACK,
    FaultEnv,
    Figures,
    Load,
    Sample,
    Service,
    fault_settings,
    openings,
    refused_some,
    summarise,
)
from tests.support.faultproxy import FaultProxy
from tests.support.frameworks import FRAMEWORKS

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# asyncpg asks for TLS first (sslmode=prefer); a reset during that exchange makes it try once
# more without TLS, so one attempt may open two TCP connections.
PG_CONNECTIONS_PER_ATTEMPT = 2


async def test_fault_retries_dead_postgres_at_startup(
    env: FaultEnv,
) -> None:
    """Start-up against a database that resets every connection gives up after
    `startup_timeout`, having tried a bounded number of times."""
    async with FaultProxy("127.0.0.1", env.pg.port) as proxy:
        proxy.cut()
        settings = fault_settings(
            proxy.url_for(env.pg.url),
            env.redis.url,
            schema=env.schema,
            app={"startup_timeout": 2.0},
        )
        core = Core(settings)
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable) as failed:
            with anyio.fail_after(settings.app.startup_timeout + 5):
                await core.__aenter__()
        elapsed = time.monotonic() - started
    match = re.search(r"\((\d+) attempts?\)", str(failed.value))
    assert match is not None, str(failed.value)
    attempts = int(match.group(1))
    # Jittered exponential pauses from 0.1s, capped at 2s, within a 2s budget: a handful of
    # attempts. 25 would already be a storm.
    assert 1 < attempts <= 25
    assert proxy.accepted <= attempts * PG_CONNECTIONS_PER_ATTEMPT
    assert elapsed <= settings.app.startup_timeout + SLACK
    pg_left = await env.monitor.wait_connections(settings.app.name)
    redis_left = await env.redis_monitor.wait_clients(settings.app.name)
    env.record(
        Figures(
            scenario="retries: pg dead at start-up",
            sent=1,
            succeeded=0,
            expected_failures=1,
            unexpected_failures=0,
            p99=elapsed,
            max_latency=elapsed,
            bound=settings.app.startup_timeout + SLACK,
            recovery=None,
            leaked=pg_left + redis_left,
            leak_detail=f"{pg_left} PostgreSQL, {redis_left} Redis",
            evidence={
                "connections reset by the proxy": proxy.accepted > 0,
                "retried": attempts > 1,
            },
            note=f"{attempts} attempts, {proxy.accepted} connections in {elapsed:.2f}s",
        )
    )


def _attempt_bound(concurrency: int, window: float, settings_reset: float, threshold: int) -> int:
    """Calls a breaker admits while its dependency is dead: those in flight when it opens (at
    most every worker, plus the failures that opened it), then one probe per reset timeout."""
    return concurrency + threshold + math.ceil(window / settings_reset) + 1


@dataclass
class _DeadUnderLoad:
    settings: Settings
    svc: Service
    samples: list[Sample]
    attempts: int
    """Connections the proxy accepted while the dependency was cut."""
    started: float
    admitted: int
    """Calls the breaker may let through in the window (see `_attempt_bound`)."""
    opened: list[float]
    """When the dead dependency's breaker opened."""
    cache_trouble: int
    """Cache calls that failed or were skipped by the breaker."""


async def _dead_under_load(env: FaultEnv, dependency: str, path: str) -> _DeadUnderLoad:
    """Cut every connection to `dependency` ("pg" or "redis") for a window while ten workers
    request `path` (`{id}` is a seeded user)."""
    window, concurrency = 3.0, 10
    server = env.pg if dependency == "pg" else env.redis
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        pg_url = proxy.url_for(env.pg.url) if dependency == "pg" else env.pg.url
        redis_url = proxy.url_for(env.redis.url) if dependency == "redis" else env.redis.url
        settings = fault_settings(pg_url, redis_url, schema=env.schema)
        async with Service(FRAMEWORKS[0], settings, env) as svc:
            ids = await svc.seed_users(10)
            breaker = svc.core.db.breaker if dependency == "pg" else svc.core.redis.breaker
            opened = openings(breaker)
            proxy.cut()
            before = proxy.accepted
            started = time.monotonic()
            async with Load(
                lambda n: svc.http.get(path.format(id=ids[n % len(ids)])), concurrency
            ) as load:
                await anyio.sleep(window)
                samples = await load.stop()
            attempts = proxy.accepted - before
            stats = svc.core.redis.cache.stats
            cache_trouble = stats.errors + stats.bypassed
            proxy.restore()
    res = settings.resilience
    admitted = _attempt_bound(
        concurrency, window, res.breaker_reset_timeout, res.breaker_failure_threshold
    )
    return _DeadUnderLoad(
        settings, svc, samples, attempts, started, admitted, opened, cache_trouble
    )


async def test_fault_retries_dead_postgres_under_load(
    env: FaultEnv,
) -> None:
    """Every connection to the database reset while requests keep coming: they get 503 at
    once, and the breaker keeps the connection attempts to a trickle."""
    run = await _dead_under_load(env, "pg", "/users/{id}")
    settings, attempts = run.settings, run.attempts
    bound = PG_CONNECTIONS_PER_ATTEMPT * run.admitted
    assert attempts <= bound, (attempts, bound)
    env.record(
        summarise(
            f"retries: pg dead under load [{FRAMEWORKS[0]}]",
            run.samples,
            bound=settings.database.connect_timeout + SLACK,
            leaked=run.svc.leaked,
            leak_detail=run.svc.leak_detail,
            evidence={
                "connection attempts reset": attempts > 0,
                "requests refused": refused_some,
                "database breaker opened": bool(run.opened),
            },
            fault_started=run.started,
            note=f"{attempts} connection attempts for {len(run.samples)} requests (bound {bound})",
        )
    )


async def test_fault_retries_dead_redis_under_load(
    env: FaultEnv,
) -> None:
    """Every connection to Redis reset while cached lookups keep coming: they succeed from the
    database, and the Redis breaker keeps the connection attempts to a trickle."""
    run = await _dead_under_load(env, "redis", "/users/{id}/cached")
    settings, attempts = run.settings, run.attempts
    # redis-py retries each command `retry_attempts` times on a fresh connection.
    bound = (settings.redis.retry_attempts + 1) * run.admitted
    assert attempts <= bound, (attempts, bound)
    env.record(
        summarise(
            f"retries: redis dead under load [{FRAMEWORKS[0]}]",
            run.samples,
            bound=2 * settings.cache.operation_timeout + SLACK,
            leaked=run.svc.leaked,
            leak_detail=run.svc.leak_detail,
            evidence={
                "connection attempts reset": attempts > 0,
                "cache calls failed or skipped": run.cache_trouble > 0,
                "Redis breaker opened": bool(run.opened),
            },
            fault_started=run.started,
            expected_status=(),
            note=f"{attempts} connection attempts for {len(run.samples)} requests (bound {bound})",
        )
    )
