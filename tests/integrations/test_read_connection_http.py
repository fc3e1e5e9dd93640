"""The read fast path through each framework: `ReadDbConnection` / `Depends(get_read_connection)`
on FastAPI, the `read_connection` provider on Litestar. It reads, gives its connection back
before the next request, answers 503 with `Retry-After` when the database breaker is open, and
the OpenAPI document lists that 503 (and no 409: it cannot write).

No postponed annotations here: the handlers are defined inside functions, and both frameworks
resolve their annotations at definition time from the local imports.
"""

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from core import Core
from core.resilience import BreakerState, mark_origin
from tests.support.frameworks import FRAMEWORKS
from tests.support.seed_models import TAKEN

pytestmark = pytest.mark.anyio

BY_EMAIL = text("SELECT email, name FROM seed_users WHERE email = :e")
COUNT = text("SELECT count(*) FROM seed_users")


def _fastapi_app(core: Core) -> Any:
    from fastapi import Depends, FastAPI
    from sqlalchemy.ext.asyncio import AsyncConnection

    from integrations.fastapi import ReadDbConnection, get_read_connection, install

    app = FastAPI()
    install(app, core)

    @app.get("/users/{email}")
    async def user(email: str, conn: ReadDbConnection) -> dict[str, Any]:
        row = (await conn.execute(BY_EMAIL, {"e": email})).one()
        return {"email": row.email, "name": row.name}

    @app.get("/count")
    async def count(conn: AsyncConnection = Depends(get_read_connection)) -> dict[str, int]:
        return {"count": int((await conn.execute(COUNT)).scalar_one())}

    return app


def _litestar_app(core: Core) -> Any:
    from litestar import Litestar, get
    from litestar.di import NamedDependency
    from litestar.params import FromPath
    from sqlalchemy.ext.asyncio import AsyncConnection

    from integrations.litestar import CorePlugin

    @get("/users/{email:str}")
    async def user(
        email: FromPath[str], read_connection: NamedDependency[AsyncConnection]
    ) -> dict[str, Any]:
        row = (await read_connection.execute(BY_EMAIL, {"e": email})).one()
        return {"email": row.email, "name": row.name}

    @get("/count")
    async def count(read_connection: NamedDependency[AsyncConnection]) -> dict[str, int]:
        return {"count": int((await read_connection.execute(COUNT)).scalar_one())}

    return Litestar(route_handlers=[user, count], plugins=[CorePlugin(core)])


APPS = {"fastapi": _fastapi_app, "litestar": _litestar_app}


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_reads_and_gives_the_connection_back_between_requests(
        framework: str, seed_core: Core
    ) -> None:
        async with _client(APPS[framework](seed_core)) as client:
            for _ in range(3):
                response = await client.get(f"/users/{TAKEN}")
                assert response.status_code == 200, response.text
                assert response.json() == {"email": TAKEN, "name": "first"}
                assert (await client.get("/count")).json() == {"count": 1}
                assert seed_core.db.read_engine.pool.checkedout() == 0
        assert seed_core.db.engine.pool.checkedout() == 0

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_an_open_database_breaker_answers_503_with_retry_after(
        framework: str, seed_core: Core
    ) -> None:
        breaker = seed_core.db.breaker
        while breaker.state is not BreakerState.OPEN:
            refused = ConnectionRefusedError()
            mark_origin(refused, "database")  # as the engine's connect marks it
            assert breaker.allow()
            breaker.record_failure(refused)
        async with _client(APPS[framework](seed_core)) as client:
            response = await client.get(f"/users/{TAKEN}")
        assert response.status_code == 503, response.text
        assert response.json()["dependency"] == "database"
        assert int(response.headers["retry-after"]) > 0

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_openapi_lists_the_503_and_no_409(framework: str, seed_core: Core) -> None:
        path = "/openapi.json" if framework == "fastapi" else "/schema/openapi.json"
        async with _client(APPS[framework](seed_core)) as client:
            document = (await client.get(path)).json()
        for route in ("/users/{email}", "/count"):
            responses = document["paths"][route]["get"]["responses"]
            assert "503" in responses, (route, sorted(responses))
            assert "Retry-After" in responses["503"]["headers"]
            assert "409" not in responses, route
