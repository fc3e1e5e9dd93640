"""Redis outages under load: cached lookups keep succeeding (the cache fails open), the Redis
breaker opens during the outage and closes once Redis is back."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
import redis.asyncio as aioredis

from core.embedded import EmbeddedRedis
from core.resilience import BreakerState
from tests.faults.harness import (
    SLACK,
    FaultEnv,
    Figures,
    Load,
    Service,
    fault_settings,
    openings,
    summarise,
    wait_for,
)
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio


async def _kill_clients(rds: EmbeddedRedis, stop: float) -> int:
    """`CLIENT KILL` every other client again and again until `stop`; how many were killed."""
    admin = aioredis.Redis.from_url(rds.url)
    killed = 0
    try:
        while time.monotonic() < stop:
            reply = await admin.execute_command("CLIENT KILL TYPE normal SKIPME yes")  # type: ignore[no-untyped-call]
            killed += int(reply)
            await anyio.sleep(0.2)
    finally:
        await admin.aclose()
    return killed


async def _redis_outage(
    framework: str,
    env: FaultEnv,
    *,
    how: str,
    concurrency: int,
    outage: float,
    users: int,
    label: str = "",
) -> Figures:
    settings = fault_settings(env.pg.url, env.redis.url, schema=env.schema)
    async with Service(framework, settings, env) as svc:
        ids = await svc.seed_users(users)
        for uid in ids:  # warm the cache
            assert (await svc.http.get(f"/users/{uid}/cached")).status_code == 200
        breaker = svc.core.redis.breaker
        seen: set[BreakerState] = set()
        opened = openings(breaker)
        # The app's Redis connections (the core names them after the app) before the fault.
        before = await env.redis_monitor.client_ids(svc.name)

        async def watch(stop: anyio.Event) -> None:
            # From the fault's start until the breaker has closed again: on a loaded machine
            # stopping Redis can take most of the outage, and the breaker may open only after.
            while not stop.is_set():
                seen.add(breaker.state)
                await anyio.sleep(0.01)

        async with (
            Load(lambda n: svc.http.get(f"/users/{ids[n % len(ids)]}/cached"), concurrency) as load,
            anyio.create_task_group() as watching,
        ):
            await anyio.sleep(0.3)
            started = time.monotonic()
            watched = anyio.Event()
            watching.start_soon(watch, watched)
            killed = 0
            # Down for the whole `outage` once the server is gone: stopping it can itself take
            # most of a short outage, leaving too brief a gap for redis-py's own retries to show.
            if how == "restart":
                await asyncio.to_thread(env.redis.stop)
                await anyio.sleep(outage)
                await asyncio.to_thread(env.redis.start)
            elif how == "pause":
                await asyncio.to_thread(env.redis.pause)
                await anyio.sleep(outage)
                await asyncio.to_thread(env.redis.resume)
            else:
                killed = await _kill_clients(env.redis, started + outage)
            lifted = time.monotonic()
            await wait_for(lambda: breaker.state is BreakerState.CLOSED, timeout=10)
            closed = time.monotonic() - lifted
            watched.set()
            await anyio.sleep(0.3)
            samples = await load.stop()
        stats = svc.core.redis.cache.stats
        after = await env.redis_monitor.client_ids(svc.name)
    if how == "client kill":
        evidence = {
            "clients killed": killed > 0,
            "the app's connections replaced": bool(before) and not before & after and bool(after),
        }
    else:
        evidence = {
            "Redis breaker opened": bool(opened),
            "breaker seen open or half-open": bool(
                {BreakerState.OPEN, BreakerState.HALF_OPEN} & seen
            ),
            "cache calls failed or skipped": stats.errors + stats.bypassed > 0,
        }
    row = summarise(
        f"redis {how}{label} [{framework}]",
        samples,
        # A lookup and a fill attempt, each bounded by the cache's operation timeout.
        bound=2 * settings.cache.operation_timeout + SLACK,
        leaked=svc.leaked,
        leak_detail=svc.leak_detail,
        evidence=evidence,
        fault_started=started,
        fault_lifted=lifted,
        expected_status=(),  # the cache fails open: every lookup must succeed
        note=(
            f"{outage:.1f}s outage; breaker opened {len(opened)}x, "
            f"closed {closed:.2f}s after; bypassed {stats.bypassed}, errors {stats.errors}"
            + (f"; {killed} clients killed" if how == "client kill" else "")
        ),
    )
    # Lookups never failed, so recovery is the breaker's: back to using Redis.
    row.recovery = closed
    return row


async def test_fault_redis_restart_quick(
    env: FaultEnv,
) -> None:
    """Redis stopped and started again under a little load (the fast subset)."""
    env.record(
        await _redis_outage(
            FRAMEWORKS[0],
            env,
            how="restart",
            concurrency=4,
            outage=1.0,
            users=5,
            label=" (quick)",
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", ["restart", "pause", "client kill"], ids=lambda how: how.replace(" ", "-")
)
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_fault_redis_outage(
    framework: str,
    how: str,
    env: FaultEnv,
) -> None:
    """Redis restarted, frozen (SIGSTOP) or its clients killed, under load."""
    env.record(
        await _redis_outage(
            framework,
            env,
            how=how,
            concurrency=10,
            outage=2.0,
            users=20,
        )
    )
