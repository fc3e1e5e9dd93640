"""A wired app's read-write request sessions are the core's ASGI layer's business: the write is
committed before the answer and nothing warns that the app lacks the layer.

No postponed annotations here: the handlers are defined inside functions, and both frameworks
resolve their annotations at definition time from the local imports.
"""

import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from core import Core, Settings
from core.unit_of_work import UnwiredSessionWarning
from tests.support.frameworks import FRAMEWORKS

pytestmark = pytest.mark.anyio


@pytest.fixture
async def core(
    database_url: str, redis_url: str, pg_schema: str, key_prefix: str
) -> AsyncIterator[Core]:
    settings = Settings(
        _env_file=None,
        app={"name": f"dcwired-{uuid.uuid4().hex[:8]}"},
        database={"url": database_url, "search_path": pg_schema, "pool_size": 2},
        redis={"url": redis_url, "key_prefix": key_prefix},
    )
    async with Core(settings) as c:
        async with c.db.get_session() as session:
            await session.execute(text("CREATE TABLE notes (body text NOT NULL)"))
        yield c


def _fastapi_app(core: Core) -> Any:
    from fastapi import FastAPI

    from integrations.fastapi import DbSession, install

    app = FastAPI()
    install(app, core)

    @app.post("/notes")
    async def add(session: DbSession) -> dict[str, bool]:
        await session.execute(text("INSERT INTO notes VALUES ('kept')"))
        return {"written": True}

    return app


def _litestar_app(core: Core) -> Any:
    from litestar import Litestar, post
    from litestar.di import NamedDependency
    from sqlalchemy.ext.asyncio import AsyncSession

    from integrations.litestar import CorePlugin

    @post("/notes")
    async def add(db_session: NamedDependency[AsyncSession]) -> dict[str, bool]:
        await db_session.execute(text("INSERT INTO notes VALUES ('kept')"))
        return {"written": True}

    return Litestar(route_handlers=[add], plugins=[CorePlugin(core)])


# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_a_wired_apps_write_is_committed_without_an_unwired_warning(
        framework: str, core: Core
    ) -> None:
        app = {"fastapi": _fastapi_app, "litestar": _litestar_app}[framework](core)
        transport = httpx.ASGITransport(app=app)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.post("/notes")
        assert response.status_code in (200, 201), response.text
        unwired = [w for w in caught if issubclass(w.category, UnwiredSessionWarning)]
        assert unwired == [], [str(w.message) for w in unwired]
        async with core.db.get_session(read_only=True) as session:
            rows = (await session.execute(text("SELECT body FROM notes"))).scalars().all()
        assert rows == ["kept"]
