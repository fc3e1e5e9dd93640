"""PostgreSQL faults under load: restart, killed idle connections, a hung server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import httpx
import pytest
from sqlalchemy import event

from core.resilience import BreakerState
from tests.faults.harness import (
    SLACK,
    FaultEnv,
    Figures,
    Load,
    Service,
    fault_settings,
    openings,
    refused_some,
    summarise,
    wait_for,
)
from tests.support.faultproxy import FaultProxy
from tests.support.frameworks import FRAMEWORKS

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _mixed(svc: Service, ids: list[str]) -> Callable[[int], Awaitable[httpx.Response]]:
    """Reads of seeded users, with every fourth request a write."""

    async def request(n: int) -> httpx.Response:
        if n % 4 == 0:
            email = f"load{n}-{uuid.uuid4().hex[:6]}@x.io"
            return await svc.http.post("/users", json={"email": email, "name": f"L{n}"})
        return await svc.http.get(f"/users/{ids[n % len(ids)]}")

    return request


async def _check_writes(svc: Service, load: Load) -> int:
    """Every write answered 201 is stored: a 2xx never stands for an uncommitted write."""
    created = [s.body["id"] for s in load.samples if s.status == 201]
    stored = await svc.existing_ids(created)
    assert set(created) == stored, f"{len(set(created) - stored)} acknowledged writes are missing"
    return len(created)


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_fault_postgres_restart(
    framework: str,
    env: FaultEnv,
) -> None:
    """A restart under load: 503s while it is down, every acknowledged write stored, recovery
    once the breaker's reset timeout has passed."""
    settings = fault_settings(env.pg.url, env.redis.url, schema=env.schema)
    async with Service(framework, settings, env) as svc:
        ids = await svc.seed_users(20)
        opened = openings(svc.core.db.breaker)
        async with Load(_mixed(svc, ids), concurrency=10) as load:
            await anyio.sleep(1.0)
            started = time.monotonic()
            await asyncio.to_thread(env.pg.restart)
            lifted = time.monotonic()
            await wait_for(lambda: svc.core.db.breaker.state is BreakerState.CLOSED, timeout=10)
            await anyio.sleep(1.5)
            samples = await load.stop()
        writes = await _check_writes(svc, load)
    env.record(
        summarise(
            f"pg restart [{framework}]",
            samples,
            bound=settings.database.connect_timeout + SLACK,
            leaked=svc.leaked,
            leak_detail=svc.leak_detail,
            evidence={
                "requests refused while it restarted": refused_some,
                "database breaker opened": bool(opened),
            },
            fault_started=started,
            fault_lifted=lifted,
            note=f"down {lifted - started:.2f}s, {writes} writes acknowledged and stored",
        )
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_fault_postgres_idle_connections_killed(
    framework: str,
    env: FaultEnv,
) -> None:
    """Idle pooled connections terminated by the server (pg_terminate_backend) while requests
    keep coming: the pool replaces them."""
    settings = fault_settings(env.pg.url, env.redis.url, schema=env.schema)
    async with Service(framework, settings, env) as svc:
        ids = await svc.seed_users(20)
        killed = 0
        connects: list[float] = []

        def on_connect(*_: object) -> None:
            connects.append(time.monotonic())

        engines = [svc.core.db.engine.sync_engine, svc.core.db.read_engine.sync_engine]
        for engine in engines:
            event.listen(engine, "connect", on_connect)
        # Fewer workers than pooled connections, so some sit idle in the pool at every moment.
        async with Load(_mixed(svc, ids), concurrency=3, pause=0.01) as load:
            await anyio.sleep(0.5)
            started = time.monotonic()
            for _ in range(6):
                killed += await env.monitor.terminate(svc.name, "idle")
                await anyio.sleep(0.3)
            lifted = time.monotonic()
            await anyio.sleep(1.0)
            samples = await load.stop()
        for engine in engines:
            event.remove(engine, "connect", on_connect)
        writes = await _check_writes(svc, load)
    replaced = sum(1 for t in connects if t >= started)
    env.record(
        summarise(
            f"pg idle conns killed [{framework}]",
            samples,
            bound=settings.database.connect_timeout + SLACK,
            leaked=svc.leaked,
            leak_detail=svc.leak_detail,
            evidence={
                "idle backends terminated": killed > 0,
                "the pools opened replacements": replaced > 0,
            },
            fault_started=started,
            fault_lifted=lifted,
            note=f"{killed} idle backends terminated, {replaced} replaced, {writes} writes stored",
        )
    )


async def _hung(
    framework: str,
    env: FaultEnv,
    *,
    how: str,
) -> Figures:
    async with FaultProxy("127.0.0.1", env.pg.port) as proxy:
        settings = fault_settings(
            proxy.url_for(env.pg.url),
            env.redis.url,
            schema=env.schema,
            database={"command_timeout": 0.5, "connect_timeout": 0.5, "pool_timeout": 0.5},
        )
        db = settings.database
        # The slowest failure: wait for a pooled connection, replace it (connect), run the
        # statement into the command timeout, then the rollback into it again before the
        # connection is thrown away. Each step is bounded; the hang lasts longer than all four.
        bound = db.pool_timeout + db.connect_timeout + 2 * (db.command_timeout or 0.0) + SLACK
        hang = bound + 0.5
        async with Service(framework, settings, env) as svc:
            ids = await svc.seed_users(20)
            opened = openings(svc.core.db.breaker)
            async with Load(_mixed(svc, ids), concurrency=10) as load:
                await anyio.sleep(0.5)
                started = time.monotonic()
                if how == "blackhole":
                    proxy.blackhole()
                else:
                    await asyncio.to_thread(env.pg.pause)
                await anyio.sleep(hang)
                if how == "blackhole":
                    proxy.restore()
                else:
                    await asyncio.to_thread(env.pg.resume)
                lifted = time.monotonic()
                await wait_for(lambda: svc.core.db.breaker.state is BreakerState.CLOSED, 10)
                await anyio.sleep(1.5)
                samples = await load.stop()
            writes = await _check_writes(svc, load)
    return summarise(
        f"pg hung, {how} [{framework}]",
        samples,
        bound=bound,
        leaked=svc.leaked,
        leak_detail=svc.leak_detail,
        evidence={
            "requests refused during the hang": refused_some,
            "database breaker opened": bool(opened),
        },
        fault_started=started,
        fault_lifted=lifted,
        max_bounded=True,
        note=f"hung {hang:.1f}s; command/connect/pool timeouts 0.5s; {writes} writes stored",
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_fault_postgres_blackholed(
    framework: str,
    env: FaultEnv,
) -> None:
    """A server that stops answering (traffic blackholed): requests fail within the configured
    timeouts instead of hanging, and the app recovers when traffic flows again."""
    env.record(await _hung(framework, env, how="blackhole"))


async def test_fault_postgres_sigstopped(
    env: FaultEnv,
) -> None:
    """The same with the server frozen (SIGSTOP), on one framework."""
    env.record(await _hung(FRAMEWORKS[0], env, how="sigstop"))
