"""Litestar adapter: one plugin that registers the lifespan, dependencies, routes and handlers.

    app = Litestar(route_handlers=[...], plugins=[CorePlugin()])

    @get("/users/{user_id:int}")
    async def read(user_id: FromPath[int], read_session: AsyncSession) -> ...: ...

Dependencies: `db_session` (read-write, committed before the response starts, rolled back if
the handler raises), `read_session` (read-only), `read_connection` (a read-only SQLAlchemy Core
connection for hot reads), `redis`, `cache` (the core's `Cache`) and
`core` (the `Core` itself; `get_core(request)` outside dependency injection). Routes: `/health`
(the readiness report, as is `/health/ready`), `/health/live` and `/metrics`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.exceptions.responses import create_exception_response
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, OpenAPIType, Operation, Reference, Schema
from litestar.plugins import InitPluginProtocol, ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core.cache import Cache
from core.http import (
    LIVENESS_BODY,
    documented_responses,
    error_response_for,
    handled_exception_types,
)
from core.runtime import Core, lifespan
from core.unit_of_work import UnitOfWorkMiddleware, request_session

__all__ = ["CorePlugin", "get_core"]


def get_core(request: Request[Any, Any, Any]) -> Core:
    """The `Core` the app's `CorePlugin` plugged in (the global `lifespan` if there is none)."""
    core: Core | None = request.app.state.get("dualcore")
    return core if core is not None else lifespan


class CorePlugin(InitPluginProtocol, ReceiveRoutePlugin):
    """Plugs a `Core` (default: the global `lifespan`) into a Litestar app: its lifespan, its
    dependencies, the health and metrics routes and the error mapping."""

    def __init__(
        self,
        core: Core | None = None,
        *,
        health_path: str = "/health",
        metrics: bool = True,
        middleware: bool = True,
        db_key: str = "db_session",
        read_db_key: str = "read_session",
        redis_key: str = "redis",
        cache_key: str = "cache",
        core_key: str = "core",
        read_connection_key: str = "read_connection",
    ) -> None:
        self.core = core if core is not None else lifespan
        self._health_path = health_path
        self._metrics = metrics
        self._middleware = middleware
        self._keys = (db_key, read_db_key, redis_key, cache_key, core_key, read_connection_key)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register lifespan, dependencies, routes, exception handlers and middleware."""
        core = self.core
        wrap = self._middleware
        if any(isinstance(item, Core) and item is not core for item in app_config.lifespan):
            # Requests would use the plugin's managers while the other core's were started.
            raise ValueError(
                "the app's lifespan names a different Core from the one given to CorePlugin: "
                "pass the same instance to both, or only to the plugin"
            )

        def run_core(app: Litestar) -> AbstractAsyncContextManager[None]:
            # Litestar's app-level middleware runs after routing, so unmatched paths would
            # escape it; wrapping the app's handler sees every request.
            if wrap:
                app.asgi_handler = core.wrap_asgi(app.asgi_handler, unit_of_work=False)  # type: ignore[arg-type,assignment]
            return core(app)

        app_config.lifespan = [*app_config.lifespan, run_core]
        # Matched routes are all that open sessions, so the unit of work can sit in the app's
        # own middleware, where it works whether or not the lifespan ran.
        app_config.middleware = [UnitOfWorkMiddleware, *app_config.middleware]  # type: ignore[list-item]
        app_config.state["dualcore"] = core

        async def provide_db_session() -> AsyncIterator[AsyncSession]:
            async with request_session(core.db) as session:
                yield session

        async def provide_read_session() -> AsyncIterator[AsyncSession]:
            async with core.db.get_session(read_only=True) as session:
                yield session

        async def provide_read_connection() -> AsyncIterator[AsyncConnection]:
            async with core.db.read_connection() as conn:
                yield conn

        def provide_redis() -> Redis:
            return core.redis.client

        def provide_cache() -> Cache:
            return core.redis.cache

        def provide_core() -> Core:
            return core

        db_key, read_db_key, redis_key, cache_key, core_key, read_conn_key = self._keys
        # The app's own providers win: that is how a test (or a service) overrides one.
        app_config.dependencies = {
            db_key: Provide(provide_db_session),
            read_db_key: Provide(provide_read_session),
            read_conn_key: Provide(provide_read_connection),
            redis_key: Provide(provide_redis, sync_to_thread=False),
            cache_key: Provide(provide_cache, sync_to_thread=False),
            core_key: Provide(provide_core, sync_to_thread=False),
            **app_config.dependencies,
        }

        def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
            mapped = error_response_for(exc)
            if mapped is None:
                return create_exception_response(request, exc)
            return Response(mapped.body, status_code=mapped.status, headers=mapped.headers)

        app_config.exception_handlers = {
            **dict.fromkeys(handled_exception_types(), on_error),
            **app_config.exception_handlers,
        }

        @get(f"{self._health_path}/live", include_in_schema=False, sync_to_thread=False)
        def live() -> dict[str, Any]:
            return LIVENESS_BODY

        @get([self._health_path, f"{self._health_path}/ready"], include_in_schema=False)
        async def ready() -> Response[dict[str, Any]]:
            report = await core.health.run()
            return Response(report.to_dict(), status_code=report.status_code)

        handlers: list[Any] = [live, ready]
        obs = core.settings.observability
        if self._metrics and core.metrics_on_app:
            from core.observability import metrics_response

            @get(obs.metrics_path, include_in_schema=False)
            async def metrics_route() -> Response[bytes]:
                body, content_type = metrics_response(core.metrics)
                return Response(body, media_type=content_type)

            handlers.append(metrics_route)
        app_config.route_handlers = [*app_config.route_handlers, *handlers]
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        """Document the 409/503 answers the core may give the route's handlers."""
        if not isinstance(route, HTTPRoute):
            return
        _answer_options_for_the_whole_path(route)
        db_key, read_db_key, redis_key, cache_key, core_key, read_conn_key = self._keys
        for handler, _ in route.route_handler_map.values():
            if not handler.resolve_include_in_schema():
                continue
            uses = _used_dependencies(handler)
            documented = documented_responses(
                # The core itself reaches the database and Redis: it may answer 503 too.
                core_dependency=bool(
                    uses & {read_db_key, read_conn_key, redis_key, cache_key, core_key}
                ),
                writes=db_key in uses,
            )
            if not documented:
                continue
            specs = dict(handler.responses or {})
            for status, answer in documented.items():
                # What the handler declares itself wins.
                specs.setdefault(
                    status,
                    ResponseSpec(
                        data_container=answer.model,
                        description=answer.description,
                        generate_examples=False,
                    ),
                )
            handler.responses = specs
            if 503 in documented and handler.operation_class is Operation:
                handler.operation_class = _WithRetryAfter


def _answer_options_for_the_whole_path(route: HTTPRoute) -> None:
    """Point Litestar's own OPTIONS handler at `route`.

    When a second handler joins a path, Litestar builds a new route but keeps the OPTIONS
    handler made for the first one, whose `Allow` then names only the first handler's methods.
    """
    entry = route.route_handler_map.get("OPTIONS")
    fn = getattr(entry[0], "fn", None) if entry else None
    if fn is None or not fn.__qualname__.startswith("HTTPRoute.create_options_handler"):
        return
    for cell in fn.__closure__ or ():
        if isinstance(cell.cell_contents, HTTPRoute):
            cell.cell_contents = route


def _used_dependencies(handler: Any) -> set[str]:
    """Names of the dependencies a handler asks for, directly or through other providers."""
    provided = handler.resolve_dependencies()
    todo = list(handler.parsed_fn_signature.parameters)
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in found or name not in provided:
            continue
        found.add(name)
        todo.extend(inspect.signature(provided[name].dependency).parameters)
    return found


@dataclass
class _WithRetryAfter(Operation):
    """An operation whose 503 answer carries the core's `Retry-After` header (Litestar's
    `ResponseSpec` has no headers)."""

    def __post_init__(self) -> None:
        response = (self.responses or {}).get("503")
        if response is not None and not isinstance(response, Reference):
            header = documented_responses(core_dependency=True, writes=False)[503].headers
            spec = header["Retry-After"]
            response.headers = {
                **(response.headers or {}),
                "Retry-After": OpenAPIHeader(
                    description=spec["description"],
                    required=True,
                    schema=Schema(type=OpenAPIType.STRING, pattern=spec["schema"]["pattern"]),
                ),
            }
