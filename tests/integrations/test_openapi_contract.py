"""The answers the core may give are in each framework's real OpenAPI document: 409 on routes
using the read-write session, 503 with `Retry-After` on every route using a core dependency,
with the bodies the core really sends; health and metrics routes stay out of it."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import IntegrityError

from core import Core, Settings
from core.http import error_response_for
from core.resilience import CircuitOpenError
from tests.support.frameworks import FRAMEWORKS

# Module level, as the handlers' annotations are resolved in the module's namespace.
if "fastapi" in FRAMEWORKS:
    from fastapi import Depends, FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession

    from integrations.fastapi import (
        Cache,
        DbSession,
        ReadDbSession,
        RedisClient,
        get_core,
        install,
    )
if "litestar" in FRAMEWORKS:
    from litestar import Litestar, get, post, put
    from litestar.di import NamedDependency, Provide
    from litestar.openapi.datastructures import ResponseSpec
    from sqlalchemy.ext.asyncio import AsyncSession

    from core.cache import Cache as CoreCache
    from integrations.litestar import CorePlugin

pytestmark = pytest.mark.anyio

SCHEMA_PATH = {"fastapi": "/openapi.json", "litestar": "/schema/openapi.json"}
WRITE = {"409", "503"}
READ = {"503"}


def _core() -> Core:
    # Never started: the document needs no server.
    return Core(
        Settings(
            app={"name": f"dcoa-{uuid.uuid4().hex[:8]}"},
            database={"url": "postgresql://u@127.0.0.1:1/d"},
            redis={"url": "redis://127.0.0.1:1/0"},
        )
    )


def _example_app(framework: str) -> Any:
    if framework == "fastapi":
        from examples.fastapi_app import create_app as create_fastapi

        return create_fastapi(_core())
    from examples.litestar_app import create_app as create_litestar

    return create_litestar(_core())


def _user_app(framework: str) -> Any:
    """Routes of an application's own: each core dependency alone (the core itself too), none,
    one through the app's own dependency, and one declaring its own 503."""
    if framework == "fastapi":

        async def owned(session: DbSession) -> AsyncSession:
            return session

        app = FastAPI()
        install(app, _core())

        @app.post("/write")
        async def write(session: DbSession) -> dict[str, str]:
            return {}

        @app.get("/read")
        async def read(session: ReadDbSession) -> dict[str, str]:
            return {}

        @app.get("/redis")
        async def redis(client: RedisClient) -> dict[str, str]:
            return {}

        @app.get("/cache")
        async def cache(c: Cache) -> dict[str, str]:
            return {}

        @app.get("/core")
        async def core(found: Core = Depends(get_core)) -> dict[str, str]:
            return {}

        @app.get("/plain")
        async def plain() -> dict[str, str]:
            return {}

        @app.put("/own")
        async def own(session: AsyncSession = Depends(owned)) -> dict[str, str]:
            return {}

        @app.get("/declared", responses={503: {"description": "Maintenance window"}})
        async def declared(session: ReadDbSession) -> dict[str, str]:
            return {}

        return app

    def provide_owned(db_session: NamedDependency[AsyncSession]) -> AsyncSession:
        return db_session

    @post("/write")
    async def write_l(db_session: NamedDependency[AsyncSession]) -> dict[str, str]:
        return {}

    @get("/read")
    async def read_l(read_session: NamedDependency[AsyncSession]) -> dict[str, str]:
        return {}

    @get("/redis")
    async def redis_l(redis: NamedDependency[Any]) -> dict[str, str]:
        return {}

    @get("/cache")
    async def cache_l(cache: NamedDependency[CoreCache]) -> dict[str, str]:
        return {}

    @get("/core")
    async def core_l(core: NamedDependency[Core]) -> dict[str, str]:
        return {}

    @get("/plain")
    async def plain_l() -> dict[str, str]:
        return {}

    @put("/own", dependencies={"owned": Provide(provide_owned, sync_to_thread=False)})
    async def own_l(owned: NamedDependency[AsyncSession]) -> dict[str, str]:
        return {}

    @get("/declared", responses={503: ResponseSpec(None, description="Maintenance window")})
    async def declared_l(read_session: NamedDependency[AsyncSession]) -> dict[str, str]:
        return {}

    return Litestar(
        [write_l, read_l, redis_l, cache_l, core_l, plain_l, own_l, declared_l],
        plugins=[CorePlugin(_core())],
        logging_config=None,
    )


async def _document(framework: str, app: Any) -> dict[str, Any]:
    """The OpenAPI document as the app serves it."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(SCHEMA_PATH[framework])
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


def _body_schema(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return _resolve(document, response["content"]["application/json"]["schema"])


def _assert_body_matches(schema: dict[str, Any], body: dict[str, Any]) -> None:
    """The core's real body is what the schema says: the same keys, all required, strings."""
    assert set(schema["properties"]) == set(body)
    assert set(schema["required"]) == set(body)
    for name, value in body.items():
        assert schema["properties"][name]["type"] == "string"
        assert isinstance(value, str)


def _core_answers(document: dict[str, Any], path: str, method: str) -> set[str]:
    responses = document["paths"][path][method]["responses"]
    return {code for code in ("409", "503") if code in responses}


# Defined only where a framework is installed: the core-only session has neither.
if FRAMEWORKS:

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_example_routes_document_the_core_answers(framework: str) -> None:
        document = await _document(framework, _example_app(framework))
        expected = {
            ("/users", "post"): WRITE,
            ("/users", "get"): READ,
            ("/users/{user_id}", "get"): READ,
            ("/users/{user_id}", "patch"): WRITE,
            ("/users/{user_id}", "delete"): WRITE,
            ("/users/{user_id}/cached", "get"): READ,
        }
        found = {
            (path, method): _core_answers(document, path, method)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        }
        assert found == expected
        # Health and metrics routes are not part of the app's API.
        assert not [p for p in document["paths"] if p.startswith(("/health", "/metrics"))]
        # The service's own answers: 404 on every route naming a user, validation errors.
        validation = "422" if framework == "fastapi" else "400"
        for (path, method), _ in expected.items():
            responses = document["paths"][path][method]["responses"]
            assert ("404" in responses) == ("{user_id}" in path), (path, method)
            assert validation in responses, (path, method)

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_documented_bodies_and_headers_are_what_the_core_sends(framework: str) -> None:
        document = await _document(framework, _example_app(framework))
        responses = document["paths"]["/users/{user_id}"]["patch"]["responses"]

        conflict = error_response_for(IntegrityError("INSERT", {}, Exception("duplicate")))
        assert conflict is not None and conflict.status == 409
        _assert_body_matches(_body_schema(document, responses["409"]), conflict.body)

        unavailable = error_response_for(CircuitOpenError("database", 2.4))
        assert unavailable is not None and unavailable.status == 503
        _assert_body_matches(_body_schema(document, responses["503"]), unavailable.body)
        header = responses["503"]["headers"]["Retry-After"]
        assert header["required"] is True
        assert re.fullmatch(header["schema"]["pattern"], unavailable.headers["Retry-After"])

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_an_applications_own_routes_get_the_core_answers(framework: str) -> None:
        document = await _document(framework, _user_app(framework))
        assert _core_answers(document, "/write", "post") == WRITE
        assert _core_answers(document, "/own", "put") == WRITE
        assert _core_answers(document, "/read", "get") == READ
        assert _core_answers(document, "/redis", "get") == READ
        assert _core_answers(document, "/cache", "get") == READ
        assert _core_answers(document, "/core", "get") == READ  # it reaches both servers
        assert _core_answers(document, "/plain", "get") == set()
        # A route's own declaration wins over the core's.
        declared = document["paths"]["/declared"]["get"]["responses"]["503"]
        assert declared["description"] == "Maintenance window"

    @pytest.mark.parametrize("framework", FRAMEWORKS)
    async def test_allow_lists_every_method_of_the_path(framework: str) -> None:
        # FastAPI makes a route per method and Litestar keeps the first handler's OPTIONS
        # answer: either way `Allow` would name only some of the documented methods.
        path = f"/users/{uuid.uuid4()}"
        transport = httpx.ASGITransport(app=_example_app(framework))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if framework == "fastapi":
                response = await client.put(path)
                assert response.status_code == 405
            else:
                response = await client.options(path)
                assert response.status_code == 204
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert {"GET", "PATCH", "DELETE"} <= allowed
        assert "PUT" not in allowed
