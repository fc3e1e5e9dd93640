"""Drive an ASGI application's lifespan (startup, shutdown) without a server, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

__all__ = ["LifespanError", "asgi_lifespan"]

Message = MutableMapping[str, Any]


class LifespanError(RuntimeError):
    """The application's startup or shutdown failed."""


@asynccontextmanager
async def asgi_lifespan(app: Any, *, phase_timeout: float = 60.0) -> AsyncIterator[dict[str, Any]]:
    """Run the ASGI `app`'s startup on entry and its shutdown on exit, in the current event loop
    (so the app shares connections with the test); yields the lifespan state.

    Startup and shutdown are each bounded by `phase_timeout` seconds.
    """
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message | None] = asyncio.Queue()
    state: dict[str, Any] = {}
    scope: dict[str, Any] = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": state,
    }
    failure: list[BaseException] = []

    async def send(message: Message) -> None:
        await from_app.put(message)

    async def run() -> None:
        try:
            await app(scope, to_app.get, send)
        except Exception as exc:
            failure.append(exc)
        finally:
            from_app.put_nowait(None)  # the app returned: nobody will answer any more

    async def exchange(event: str) -> None:
        await to_app.put({"type": f"lifespan.{event}"})
        with anyio.fail_after(phase_timeout):
            reply = await from_app.get()
        if reply is not None and reply["type"] == f"lifespan.{event}.complete":
            return
        if reply is not None and reply["type"] == f"lifespan.{event}.failed":
            reason = reply.get("message") or "no message"
            raise LifespanError(f"application {event} failed: {reason}") from _first(failure)
        if failure:
            raise LifespanError(f"application {event} failed: {failure[0]!r}") from failure[0]
        raise LifespanError(f"the application does not support the lifespan protocol ({event})")

    task = asyncio.ensure_future(run())
    try:
        await exchange("startup")
        yield state
        await exchange("shutdown")
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _first(errors: list[BaseException]) -> BaseException | None:
    return errors[0] if errors else None
