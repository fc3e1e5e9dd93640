"""Litestar adapter: one plugin that registers the lifespan, dependencies, routes and handlers.

    app = Litestar(route_handlers=[...], plugins=[CorePlugin()])

    @get("/users/{user_id:int}")
    async def read(user_id: int, read_session: AsyncSession) -> ...: ...

Dependencies: `db_session` (read-write, committed before the response starts, rolled back if
the handler raises), `read_session` (read-only) and `redis`. Routes: `/health` (the readiness
report, as is `/health/ready`), `/health/live` and `/metrics`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.exceptions.responses import create_exception_response
from litestar.plugins import InitPluginProtocol
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from core.http import LIVENESS_BODY, error_response_for, handled_exception_types
from core.runtime import Lifespan, lifespan
from core.unit_of_work import UnitOfWorkMiddleware, request_session

__all__ = ["CorePlugin"]


class CorePlugin(InitPluginProtocol):
    """Plugs a core `Lifespan` (default: the global `lifespan`) into a Litestar app."""

    def __init__(
        self,
        core: Lifespan | None = None,
        *,
        health_path: str = "/health",
        metrics: bool = True,
        middleware: bool = True,
        db_key: str = "db_session",
        read_db_key: str = "read_session",
        redis_key: str = "redis",
    ) -> None:
        self.core = core if core is not None else lifespan
        self._health_path = health_path
        self._metrics = metrics
        self._middleware = middleware
        self._keys = (db_key, read_db_key, redis_key)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register lifespan, dependencies, routes, exception handlers and middleware."""
        core = self.core
        wrap = self._middleware

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

        def provide_redis() -> Redis:
            return core.redis.client

        db_key, read_db_key, redis_key = self._keys
        # The app's own providers win: that is how a test (or a service) overrides one.
        app_config.dependencies = {
            db_key: Provide(provide_db_session),
            read_db_key: Provide(provide_read_session),
            redis_key: Provide(provide_redis, sync_to_thread=False),
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
