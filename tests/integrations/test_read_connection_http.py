"""The read fast path through each framework: `ReadDbConnection` / `Depends(get_read_connection)`
on FastAPI, the `read_connection` provider on Litestar. It reads, gives its connection back
before the next request, answers 503 with `Retry-After` when the database breaker is open, and
the OpenAPI document lists that 503 (and no 409: it cannot write).

No postponed annotations here: the handlers are defined inside functions, and both frameworks
resolve their annotations at definition time from the local imports.
"""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from core import Core, Settings
from core.resilience import BreakerState, mark_origin
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio


@pytest.fixture
async def core(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> AsyncIterator[Core]:
    settings = Settings(
        _env_file=None,
        app={"name": f"dcreadconn-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "search_path": pg_schema, "pool_size": 1, "max_overflow": 0},
        redis={"url": redis_url, "key_prefix": key_prefix},
        resilience={"breaker_failure_threshold": 1, "breaker_reset_timeout": 30},
    )
    async with Core(settings) as c:
        async with c.db.get_session() as session:
            await session.execute(text("CREATE TABLE items (id int PRIMARY KEY, name text)"))
            await session.execute(text("INSERT INTO items VALUES (7, 'seven')"))
        yield c


def _fastapi_app(core: Core) -> Any:
    from fastapi import Depends, FastAPI
    from sqlalchemy.ext.asyncio import AsyncConnection

    from integrations.fastapi import ReadDbConnection, get_read_connection, install

    app = FastAPI()
    install(app, core)

    @app.get("/items/{item_id}")
    async def item(item_id: int, conn: ReadDbConnection) -> dict[str, Any]:
        row = (
            await conn.execute(text("SELECT id, name FROM items WHERE id = :i"), {"i": item_id})
        ).one()
        return {"id": row.id, "name": row.name}

    @app.get("/count")
    async def count(conn: AsyncConnection = Depends(get_read_connection)) -> dict[str, int]:
        return {"count": int((await conn.execute(text("SELECT count(*) FROM items"))).scalar_one())}

    return app


def _litestar_app(core: Core) -> Any:
    from litestar import Litestar, get
    from litestar.di import NamedDependency
    from litestar.params import FromPath
    from sqlalchemy.ext.asyncio import AsyncConnection

    from integrations.litestar import CorePlugin

    @get("/items/{item_id:int}")
    async def item(
        item_id: FromPath[int], read_connection: NamedDependency[AsyncConnection]
    ) -> dict[str, Any]:
        query = text("SELECT id, name FROM items WHERE id = :i")
        row = (await read_connection.execute(query, {"i": item_id})).one()
        return {"id": row.id, "name": row.name}

    @get("/count")
    async def count(read_connection: NamedDependency[AsyncConnection]) -> dict[str, int]:
        found = await read_connection.execute(text("SELECT count(*) FROM items"))
        return {"count": int(found.scalar_one())}

    return Litestar(route_handlers=[item, count], plugins=[CorePlugin(core)])


APPS = {"fastapi": _fastapi_app, "litestar": _litestar_app}


# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_reads_and_gives_the_connection_back_between_requests(
        framework: str, core: Core
    ) -> None:
        app = APPS[framework](core)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            # A pool of one connection: each request must have returned it for the next to run.
            for _ in range(3):
                response = await client.get("/items/7")
                assert response.status_code == 200, response.text
                assert response.json() == {"id": 7, "name": "seven"}
                counted = await client.get("/count")
                assert counted.json() == {"count": 1}
        assert core.db.read_engine.pool.checkedout() == 0
        assert core.db.engine.pool.checkedout() == 0

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_an_open_database_breaker_answers_503_with_retry_after(
        framework: str, core: Core
    ) -> None:
        app = APPS[framework](core)
        breaker = core.db.breaker
        assert breaker.allow()
        refused = ConnectionRefusedError()
        mark_origin(refused, "database")  # as the engine's connect marks it
        breaker.record_failure(refused)  # threshold 1: open
        assert breaker.state is BreakerState.OPEN
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            response = await client.get("/items/7")
        assert response.status_code == 503, response.text
        assert response.json()["dependency"] == "database"
        assert 0 < int(response.headers["retry-after"]) <= 30

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_openapi_lists_the_503_and_no_409(framework: str, core: Core) -> None:
        app = APPS[framework](core)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            path = "/openapi.json" if framework == "fastapi" else "/schema/openapi.json"
            document = (await client.get(path)).json()
        for route in ("/items/{item_id}", "/count"):
            responses = document["paths"][route]["get"]["responses"]
            assert "503" in responses, (route, sorted(responses))
            assert "Retry-After" in responses["503"]["headers"]
            assert "409" not in responses, route
