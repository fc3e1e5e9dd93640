"""FastAPI adapter: dependencies, lifespan, health and metrics routes, error mapping.

    app = FastAPI()
    install(app)  # or install(app, Core(settings))

    @app.get("/users/{user_id}")
    async def read(user_id: int, db: AsyncSession = Depends(get_db)) -> ...: ...

Every read-write session is committed before the response starts, however it is obtained
(`Depends(get_db)`, the `DbSession` alias, a dependency of your own built on `get_db`): a commit
that fails becomes an error response (409, 503 or 500), never a 2xx. `install(app)` adds the
ASGI layer that does it (`core.unit_of_work`) and runs the core around the app's own lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.routing import Match

from core.cache import Cache as _Cache
from core.http import (
    LIVENESS_BODY,
    documented_responses,
    error_response_for,
    handled_exception_types,
)
from core.runtime import Core, lifespan
from core.unit_of_work import request_session

__all__ = [
    "Cache",
    "DbSession",
    "ReadDbConnection",
    "ReadDbSession",
    "RedisClient",
    "get_cache",
    "get_core",
    "get_db",
    "get_read_connection",
    "get_read_db",
    "get_redis",
    "install",
]


async def get_core(request: Request) -> Core:
    """The `Core` the app was installed with (the global `lifespan` if `install` was not
    called), for a dependency or handler that needs more than a session or the client.

    Async, as every dependency here: FastAPI runs a plain function in its thread pool."""
    return _core_of(request)


def _core_of(request: Request) -> Core:
    core: Core | None = getattr(request.app.state, "dualcore", None)
    return core if core is not None else lifespan


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-write session per request: committed before the response starts, rolled back if
    the endpoint raises."""
    async with request_session(_core_of(request).db) as session:
        yield session


async def get_read_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-only session per request (no transaction round trips, writes refused)."""
    async with _core_of(request).db.get_session(read_only=True) as session:
        yield session


async def get_read_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """A read-only SQLAlchemy Core connection per request, for hot read endpoints: no ORM
    session, one round trip per statement, replicas honoured (`DatabaseManager.read_connection`)."""
    async with _core_of(request).db.read_connection() as conn:
        yield conn


async def get_redis(request: Request) -> Redis:
    """The shared Redis client (async: FastAPI runs plain functions in a thread pool)."""
    return _core_of(request).redis.client


async def get_cache(request: Request) -> _Cache:
    """The core's cache over the shared Redis client (`get_or_set`, `delete`, groups)."""
    return _core_of(request).redis.cache


DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]
ReadDbSession = Annotated[AsyncSession, Depends(get_read_db, scope="function")]
ReadDbConnection = Annotated[AsyncConnection, Depends(get_read_connection, scope="function")]
RedisClient = Annotated[Redis, Depends(get_redis)]
Cache = Annotated[_Cache, Depends(get_cache)]


def install(
    app: FastAPI,
    core: Core | None = None,
    *,
    health_path: str = "/health",
    metrics: bool = True,
    middleware: bool = True,
) -> None:
    """Wire the core into `app`: state for the dependencies, the ASGI layer that commits
    request sessions before the response, 503/409 error mapping, the health routes
    (`/health` is the readiness report, as are `/health/ready`; `/health/live`), `/metrics` and
    the observability middleware (`middleware=False` leaves out only the latter).

    `core` defaults to the global `lifespan`. It runs around the app's own lifespan, so
    `FastAPI(lifespan=...)` needs no mention of it; naming it there too still works, and naming
    a different `Core` there is refused.
    """
    core = core if core is not None else lifespan
    app.state.dualcore = core
    _run_around_app_lifespan(app, core)

    async def on_error(request: Request, exc: Exception) -> Response:
        mapped = error_response_for(exc)
        if mapped is None:
            raise exc
        return JSONResponse(mapped.body, status_code=mapped.status, headers=mapped.headers)

    for exc_type in handled_exception_types():
        app.add_exception_handler(exc_type, on_error)
    if 405 not in app.exception_handlers:
        app.add_exception_handler(405, _method_not_allowed)

    async def live() -> dict[str, Any]:
        return LIVENESS_BODY

    async def ready() -> Response:
        report = await core.health.run()
        return JSONResponse(report.to_dict(), status_code=report.status_code)

    app.add_api_route(health_path, ready, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{health_path}/live", live, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{health_path}/ready", ready, methods=["GET"], include_in_schema=False)

    obs = core.settings.observability
    if metrics and core.metrics_on_app:
        from core.observability import metrics_response

        async def metrics_route() -> Response:
            body, content_type = metrics_response(core.metrics)
            return Response(body, headers={"content-type": content_type})

        app.add_api_route(obs.metrics_path, metrics_route, methods=["GET"], include_in_schema=False)

    _document_core_responses(app)

    # Outside Starlette's own error handling, so the app's 500 handlers still answer and every
    # response, unmatched paths included, is logged, counted and carries the id, and a commit
    # that fails as the response starts can still replace it.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: core.wrap_asgi(build(), observability=middleware)  # type: ignore[method-assign]


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 whose `Allow` lists the methods of every route on the path: Starlette names only
    those of the first route it matched, and FastAPI makes one route per method."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        methods = getattr(route, "methods", None)
        if methods and route.matches(request.scope)[0] is not Match.NONE:
            allowed |= methods
    headers = dict(getattr(exc, "headers", None) or {})
    if allowed:
        headers["Allow"] = ", ".join(sorted(allowed))
    return JSONResponse({"detail": getattr(exc, "detail", "Method Not Allowed")}, 405, headers)


def _uses(dependant: Dependant) -> set[Any]:
    """Every callable the dependant depends on, directly or through other dependencies."""
    found: set[Any] = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= _uses(sub)
    return found


def _document_core_responses(app: FastAPI) -> None:
    """Add the 409/503 answers the core may give each route to the app's OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for route in app.routes:
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            uses = _uses(route.dependant)
            documented = documented_responses(
                # The core itself reaches the database and Redis: it may answer 503 too.
                core_dependency=bool(
                    uses & {get_read_db, get_read_connection, get_redis, get_cache, get_core}
                ),
                writes=get_db in uses,
            )
            operations = schema.get("paths", {}).get(route.path_format, {})
            for method in route.methods or ():
                operation = operations.get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                for status, answer in documented.items():
                    name = answer.model.__name__
                    components.setdefault(
                        name,
                        answer.model.model_json_schema(ref_template="#/components/schemas/{model}"),
                    )
                    # What the route declares itself wins.
                    responses.setdefault(
                        str(status),
                        {
                            "description": answer.description,
                            **({"headers": answer.headers} if answer.headers else {}),
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": f"#/components/schemas/{name}"}
                                }
                            },
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _run_around_app_lifespan(app: FastAPI, core: Core) -> None:
    own: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context
    if isinstance(own, Core):
        if own is not core:
            raise ValueError(
                "install() was given a different Core from the app's lifespan: pass the same "
                "instance to both, or leave it out of FastAPI(lifespan=...)"
            )
        return
    if getattr(own, "dualcore_core", None) is not None:
        raise ValueError("install() was already called on this app")

    @asynccontextmanager
    async def with_core(app_: Any) -> AsyncIterator[Any]:
        # The core starts first and closes last, so the app's own start-up can use it.
        async with core(app_), own(app_) as state:
            yield state

    with_core.dualcore_core = core  # type: ignore[attr-defined]
    app.router.lifespan_context = with_core
