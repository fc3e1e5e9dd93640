"""Small apps for the observability suite, built through the real adapters.

No postponed annotations here: the handlers are defined inside functions, and both frameworks
resolve their annotations at definition time from the local imports. Framework imports stay
inside the builders, so a session with only one framework installed can import this module.
"""

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio

from core.observability import get_request_id
from core.observability.stack import MiddlewareSpec
from core.runtime import Core

APP_LOGGER = "dctest.obs.app"


async def chunks() -> AsyncIterator[bytes]:
    """Three chunks 50 ms apart, for measuring streamed responses."""
    for i in range(3):
        await anyio.sleep(0.05)
        yield f"chunk{i}\n".encode()


def build_app(framework: str, core: Core) -> Any:
    """An app wired by `install(app, core)` / `CorePlugin(core)` with the routes the suite uses.

    Routes: `/users/{user_id}` (int), `/orders/{order_id}` (UUID), `/items/{name}` (the handler
    answers 404), `POST /echo`, `/boom` (raises), `/log` (logs, returns the request id),
    `/stream`, plus the adapters' `/metrics` and `/health/*`.
    """
    if framework == "fastapi":
        return _fastapi(core, native=None)
    if framework == "litestar":
        return _litestar(core, native=None)
    raise ValueError(f"unknown framework {framework!r}")


def build_native_app(framework: str, specs: list[MiddlewareSpec]) -> Any:
    """The same routes with `specs` in the framework's own middleware list and no adapter."""
    if framework == "fastapi":
        return _fastapi(None, native=specs)
    if framework == "litestar":
        return _litestar(None, native=specs)
    raise ValueError(f"unknown framework {framework!r}")


def _fastapi(core: Core | None, native: list[MiddlewareSpec] | None) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    from integrations.fastapi import install

    app = FastAPI(lifespan=core) if core is not None else FastAPI()
    if core is not None:
        install(app, core)
    for cls, kwargs in reversed(native or []):
        app.add_middleware(cls, **kwargs)

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.get("/orders/{order_id}")
    async def order(order_id: uuid.UUID) -> dict[str, str]:
        return {"id": str(order_id)}

    @app.get("/items/{name}")
    async def item(name: str) -> dict[str, str]:
        raise HTTPException(404, "no such item")

    @app.post("/echo")
    async def echo() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/log")
    async def log() -> dict[str, Any]:
        logging.getLogger(APP_LOGGER).warning("inside handler")
        return {"request_id": get_request_id()}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    return app


def _litestar(core: Core | None, native: list[MiddlewareSpec] | None) -> Any:
    from litestar import Litestar, get, post
    from litestar.exceptions import NotFoundException
    from litestar.middleware import DefineMiddleware
    from litestar.params import FromPath
    from litestar.response import Stream

    from integrations.litestar import CorePlugin

    @get("/users/{user_id:int}")
    async def user(user_id: FromPath[int]) -> dict[str, int]:
        return {"id": user_id}

    @get("/orders/{order_id:uuid}")
    async def order(order_id: FromPath[uuid.UUID]) -> dict[str, str]:
        return {"id": str(order_id)}

    @get("/items/{name:str}")
    async def item(name: FromPath[str]) -> None:
        raise NotFoundException("no such item")

    @post("/echo", status_code=200)
    async def echo() -> dict[str, str]:
        return {"ok": "yes"}

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @get("/log")
    async def log() -> dict[str, Any]:
        logging.getLogger(APP_LOGGER).warning("inside handler")
        return {"request_id": get_request_id()}

    @get("/stream")
    async def stream() -> Stream:
        return Stream(chunks(), media_type="text/plain")

    return Litestar(
        [user, order, item, echo, boom, log, stream],
        plugins=[CorePlugin(core)] if core is not None else [],
        # Litestar types scopes more narrowly than the plain-dict ASGI types in core.
        middleware=[DefineMiddleware(cls, **kwargs) for cls, kwargs in native or []],  # type: ignore[arg-type]
        # Litestar would otherwise reconfigure the process's logging.
        logging_config=None,
    )
