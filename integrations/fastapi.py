"""FastAPI adapter: dependencies, lifespan, health and metrics routes, error mapping.

    app = FastAPI(lifespan=lifespan)
    install(app)

    @app.get("/users/{user_id}")
    async def read(user_id: int, db: AsyncSession = Depends(get_db)) -> ...: ...

Every read-write session is committed before the response starts, however it is obtained
(`Depends(get_db)`, the `DbSession` alias, a dependency of your own built on `get_db`): a commit
that fails becomes an error response (409, 503 or 500), never a 2xx. `install(app)` adds the
ASGI layer that does it (`core.unit_of_work`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from core.http import LIVENESS_BODY, error_response_for, handled_exception_types
from core.runtime import Lifespan, combine_lifespans, lifespan
from core.unit_of_work import request_session

__all__ = [
    "DbSession",
    "ReadDbSession",
    "RedisClient",
    "combine_lifespans",
    "get_db",
    "get_read_db",
    "get_redis",
    "install",
    "lifespan",
]


def _core(request: Request) -> Lifespan:
    core: Lifespan | None = getattr(request.app.state, "dualcore", None)
    return core if core is not None else lifespan


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-write session per request: committed before the response starts, rolled back if
    the endpoint raises."""
    async with request_session(_core(request).db) as session:
        yield session


async def get_read_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-only session per request (no transaction round trips, writes refused)."""
    async with _core(request).db.get_session(read_only=True) as session:
        yield session


async def get_redis(request: Request) -> Redis:
    """The shared Redis client (async: FastAPI runs plain functions in a thread pool)."""
    return _core(request).redis.client


DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]
ReadDbSession = Annotated[AsyncSession, Depends(get_read_db, scope="function")]
RedisClient = Annotated[Redis, Depends(get_redis)]


def install(
    app: FastAPI,
    core: Lifespan | None = None,
    *,
    health_path: str = "/health",
    metrics: bool = True,
    middleware: bool = True,
) -> None:
    """Wire the core into `app`: state for the dependencies, the ASGI layer that commits
    request sessions before the response, 503/409 error mapping, the health routes
    (`/health` is the readiness report, as are `/health/ready`; `/health/live`), `/metrics` and
    the observability middleware (`middleware=False` leaves out only the latter).

    Pass the same `core` you gave to `FastAPI(lifespan=...)` (default: the global `lifespan`).
    """
    core = core if core is not None else lifespan
    app.state.dualcore = core

    async def on_error(request: Request, exc: Exception) -> Response:
        mapped = error_response_for(exc)
        if mapped is None:
            raise exc
        return JSONResponse(mapped.body, status_code=mapped.status, headers=mapped.headers)

    for exc_type in handled_exception_types():
        app.add_exception_handler(exc_type, on_error)

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

    # Outside Starlette's own error handling, so the app's 500 handlers still answer and every
    # response, unmatched paths included, is logged, counted and carries the id, and a commit
    # that fails as the response starts can still replace it.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: core.wrap_asgi(build(), observability=middleware)  # type: ignore[method-assign]
