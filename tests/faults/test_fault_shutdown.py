"""Shutdown with requests in flight, through a real server (uvicorn) running the app's lifespan:
the process exits cleanly and leaves no server connection behind."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import anyio
import httpx
import pytest
import uvicorn

from core.runtime import Core
from tests.faults.harness import (
    SLACK,
    FaultEnv,
    Load,
    Service,
    fault_settings,
    summarise,
    wait_for,
)
from tests.support.frameworks import FRAMEWORKS
from tests.support.scenario_apps import build_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# What a client sees from a server that stopped listening or dropped the connection.
GONE = ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError")


async def _create_tables(core: Core) -> None:
    from examples.users.models import User

    await core.db.create_all(User.metadata)


@pytest.mark.parametrize("mode", ["graceful", "forced"])
async def test_fault_shutdown_with_requests_in_flight(
    mode: str,
    env: FaultEnv,
) -> None:
    """The server is told to stop while slow queries, reads and writes are running. Graceful:
    they finish within the grace period. Forced: the grace period is shorter than the slow
    queries, so the server cancels them. Either way the lifespan closes the pools and no
    connection stays open on the server; no write answered 201 is missing."""
    framework = FRAMEWORKS[0]
    slow = 1.0
    grace = 5.0 if mode == "graceful" else 0.3
    settings = fault_settings(env.pg.url, env.redis.url, schema=env.schema)
    name = settings.app.name
    core = Core(
        settings,
        on_startup=[_create_tables],
    )
    await env.monitor.execute(f'CREATE SCHEMA "{env.schema}"')
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(framework, core),
            lifespan="on",
            http="h11",
            ws="none",
            log_config=None,  # leave logging alone: pytest captures it
            access_log=False,
            timeout_graceful_shutdown=grace,  # type: ignore[arg-type]  # a float works
        )
    )
    try:
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        await wait_for(lambda: server.started or serving.done(), timeout=15)
        assert server.started, serving
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            ids = []
            for i in range(10):
                r = await http.post("/users", json={"email": f"s{i}@x.io", "name": f"S{i}"})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])

            async def request(n: int) -> httpx.Response:
                if n % 3 == 0:
                    return await http.get("/slow", params={"seconds": slow})
                if n % 3 == 1:
                    return await http.get(f"/users/{ids[n % len(ids)]}")
                email = f"w{n}-{uuid.uuid4().hex[:6]}@x.io"
                return await http.post("/users", json={"email": email, "name": "W"})

            async with Load(request, concurrency=12, pause=0.01) as load:
                await anyio.sleep(0.6)
                in_flight = await env.monitor.connections(name, "active")
                started = time.monotonic()
                server.should_exit = True
                load.halt()  # what is in flight now is what the shutdown has to deal with
                with anyio.fail_after(grace + settings.app.shutdown_timeout + 5):
                    await serving
                exited = time.monotonic() - started
                samples = await load.stop()
    finally:
        server.should_exit = True
        listener.close()
    # The pools were closed by the lifespan, and nothing rebuilt them afterwards.
    assert core.db._engine is None and core.db._read_engine is None
    pg_left = await env.monitor.wait_connections(name)
    redis_left = await env.redis_monitor.wait_clients(name)
    created = [s.body["id"] for s in samples if s.status == 201]
    stored = await env.monitor.fetchval(
        f'SELECT count(*) FROM "{env.schema}".users WHERE id::text = ANY($1)', created
    )
    await env.monitor.execute(f'DROP SCHEMA "{env.schema}" CASCADE')
    assert stored == len(created), "a write answered 201 is missing"
    # Requests still running when the grace period ends are cancelled by uvicorn, which answers
    # them with its own plain-text 500 (or drops the connection): the server's choice, expected.
    cut_off = [
        s
        for s in samples
        if mode == "forced" and s.status == 500 and s.body is None and s.ended >= started + grace
    ]
    dropped = [s for s in samples if s.error is not None and s.error.split(":")[0] in GONE]
    finished = [s for s in samples if s.ok and s.started < started < s.ended]
    evidence = {"queries running at stop": in_flight > 0}
    if mode == "graceful":
        evidence["requests in flight at stop completed"] = bool(finished)
    else:
        evidence["requests cut off by the server"] = bool(cut_off or dropped)
    env.record(
        summarise(
            f"shutdown in flight, {mode} [{framework}]",
            [s for s in samples if s not in cut_off],
            # A slow request may first wait for a pooled connection.
            bound=settings.database.pool_timeout + slow + SLACK,
            leaked=pg_left + redis_left,
            leak_detail=f"{pg_left} PostgreSQL, {redis_left} Redis",
            evidence=evidence,
            fault_started=started,
            expected_errors=GONE,
            extra_expected=len(cut_off),
            note=(
                f"{in_flight} queries running at stop, {len(cut_off)} cut off; exit {exited:.2f}s "
                f"(grace {grace}s); {len(created)} writes stored"
            ),
        )
    )


async def test_fault_shutdown_lifespan_exits_under_requests(
    env: FaultEnv,
) -> None:
    """A server that runs the lifespan shutdown without draining requests first: the core's
    close waits (bounded) for the connections still checked out, so the requests in flight
    finish and no connection is left open or unclosed."""
    framework = FRAMEWORKS[0]
    slow = 0.8
    settings = fault_settings(env.pg.url, env.redis.url, schema=env.schema)
    svc = Service(framework, settings, env)
    async with svc:
        ids = await svc.seed_users(10)

        async def request(n: int) -> httpx.Response:
            if n % 3 == 0:
                return await svc.http.get("/slow", params={"seconds": slow})
            if n % 3 == 1:
                return await svc.http.get(f"/users/{ids[n % len(ids)]}")
            email = f"w{n}-{uuid.uuid4().hex[:6]}@x.io"
            return await svc.http.post("/users", json={"email": email, "name": "W"})

        async with Load(request, concurrency=12, pause=0.01) as load:
            await anyio.sleep(0.5)
            load.halt()
            checked_out = svc.checked_out()
            started = time.monotonic()
            with anyio.fail_after(settings.app.shutdown_timeout + 5):
                await svc.close_core()
            exited = time.monotonic() - started
            samples = await load.stop()
        created = [s.body["id"] for s in samples if s.status == 201]
        assert len(await svc.existing_ids(created)) == len(created)
    env.record(
        summarise(
            f"shutdown in flight, lifespan first [{framework}]",
            samples,
            bound=settings.database.pool_timeout + slow + SLACK,
            leaked=svc.leaked,
            leak_detail=svc.leak_detail,
            evidence={
                "connections checked out at stop": checked_out > 0,
                "requests in flight at stop completed": any(
                    s.ok and s.started < started < s.ended for s in samples
                ),
            },
            fault_started=started,
            note=(
                f"{checked_out} connections checked out at stop; close took {exited:.2f}s; "
                f"{len(created)} writes stored"
            ),
        )
    )
