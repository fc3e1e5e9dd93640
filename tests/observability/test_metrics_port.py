"""`/metrics` kept off the public port: `OBSERVABILITY__METRICS_PORT` serves it on a port of its
own (and not on the app), `OBSERVABILITY__METRICS_ENABLED=false` serves it nowhere."""

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import Core, Settings
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return port


def _core(database_url: str, redis_url: str, key_prefix: str, **obs: Any) -> Core:
    settings = Settings(
        _env_file=None,
        app={"name": f"dcmet-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url},
        redis={"url": redis_url, "key_prefix": key_prefix},
        observability={"metrics_host": "127.0.0.1", **obs},
    )
    return Core(settings)


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_metrics_on_their_own_port(
    database_url: str, redis_url: str, key_prefix: str, free_port: int
) -> None:
    core = _core(database_url, redis_url, key_prefix, metrics_port=free_port)
    assert not core.metrics_on_app
    async with core:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{free_port}/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            names = {f.name for f in text_string_to_metric_families(r.text)}
            assert "dualcore_db_pool_checked_out" in names or any("pool" in n for n in names)
            assert (await client.get(f"http://127.0.0.1:{free_port}/other")).status_code == 404
            post = await client.post(f"http://127.0.0.1:{free_port}/metrics")
            assert post.status_code == 405
            assert post.headers["allow"] == "GET, HEAD"
            head = await client.head(f"http://127.0.0.1:{free_port}/metrics")
            assert head.status_code == 200
            assert head.content == b""
        # Hostile input: a request head that never ends is cut off, not buffered.
        answer = await _raw(free_port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)
        assert answer.startswith(b"HTTP/1.1 431 ")
        garbage = await _raw(free_port, b"\x00\x01\x02 \xff\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 404 ")
    # Closed with the rest of the core.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", free_port)


async def test_a_taken_metrics_port_fails_start_up_naming_it(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        core = _core(database_url, redis_url, key_prefix, metrics_port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}/metrics"):
            await core.__aenter__()
    # Start-up failed cleanly: everything it had opened is closed again.
    assert core.db._engine is None


async def test_health_cache_ttl_reaches_the_registry(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    assert _core(database_url, redis_url, key_prefix).health.cache_for == 1.0
    core = _core(database_url, redis_url, key_prefix, health_cache_ttl=0)
    assert core.health.cache_for == 0


if FRAMEWORKS:

    def _app(framework: str, core: Core) -> Any:
        if framework == "fastapi":
            from fastapi import FastAPI

            from integrations.fastapi import install

            app = FastAPI()
            install(app, core)
            return app
        from litestar import Litestar

        from integrations.litestar import CorePlugin

        return Litestar(plugins=[CorePlugin(core)])

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    @pytest.mark.parametrize("setting", ["port", "disabled"])
    async def test_the_app_serves_no_metrics_when_told_not_to(
        framework: str,
        setting: str,
        database_url: str,
        redis_url: str,
        key_prefix: str,
        free_port: int,
    ) -> None:
        obs = {"metrics_port": free_port} if setting == "port" else {"metrics_enabled": False}
        core = _core(database_url, redis_url, key_prefix, **obs)
        async with _running(framework, core) as client:
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/metrics")).status_code == 404
            async with httpx.AsyncClient() as other:
                if setting == "port":
                    r = await other.get(f"http://127.0.0.1:{free_port}/metrics")
                    assert r.status_code == 200
                    assert 'route="/health/live"' in r.text
                else:
                    with pytest.raises(httpx.ConnectError):
                        await other.get(f"http://127.0.0.1:{free_port}/metrics")

    @contextlib.asynccontextmanager
    async def _running(framework: str, core: Core) -> AsyncIterator[Any]:
        """A client for the app with its lifespan running, as under a server."""
        app = _app(framework, core)
        if framework == "fastapi":
            async with core:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    yield c
            return
        from litestar.testing import AsyncTestClient

        async with AsyncTestClient(app) as c:
            yield c
