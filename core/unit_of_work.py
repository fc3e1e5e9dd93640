"""Commit before the response: a request's read-write sessions are finished when it answers.

A framework may run a dependency's cleanup after the response has been sent (FastAPI's default
dependency scope does): a commit that fails there cannot reach the client, which already has its
2xx, and the write is lost. So the sessions the adapters hand out are registered with the
request, and `UnitOfWorkMiddleware` finishes the ones still open when the response starts:
committed, unless the response is a server error (5xx), which rolls them back. If the commit
fails, the client gets the error the core maps it to (409, 503, else 500) instead of the
original response, whose body is never sent.

A session whose dependency exits before the response (FastAPI's `scope="function"`, Litestar's
providers, an exception in the handler) commits or rolls back there, as `get_session()` does,
and is no longer the middleware's business. A streaming body that uses the session after the
response started runs in a new transaction, committed when the dependency exits.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from core.observability.asgi_types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from core.database import DatabaseManager

__all__ = ["UnitOfWorkMiddleware", "UnwiredSessionWarning", "request_session", "warn_unwired"]

log = logging.getLogger("dualcore.database")

_open: ContextVar[list[AsyncSession] | None] = ContextVar("dualcore_request_sessions", default=None)


class UnwiredSessionWarning(RuntimeWarning):
    """A request session was used in an app without the core's ASGI layer."""


_UNWIRED = (
    "the app is not wired to dualcore's ASGI layer, so a request session's commit may run after "
    "the response is sent and a failed commit cannot reach the client. Wire the app: "
    "`integrations.fastapi.install(app)` or `Litestar(plugins=[CorePlugin()])`"
)
_warned = False


@asynccontextmanager
async def request_session(
    db: DatabaseManager, *, read_only: bool = False
) -> AsyncIterator[AsyncSession]:
    """The session a framework dependency hands to one request.

    Like `db.get_session()`, and in addition a read-write session is committed no later than
    when the response starts (see the module's docstring).
    """
    async with db.get_session(read_only=read_only) as session:
        pending = None if read_only else _open.get()
        if pending is None:
            if not read_only:
                warn_unwired()
            yield session
            return
        pending.append(session)
        try:
            yield session
        finally:
            if session in pending:
                pending.remove(session)


def warn_unwired() -> None:
    """Warn (`UnwiredSessionWarning`, and once in the log) that the app lacks the ASGI layer
    that commits request sessions before the response."""
    global _warned
    if not _warned:
        _warned = True
        log.warning(_UNWIRED)
    warnings.warn(_UNWIRED, UnwiredSessionWarning, stacklevel=3)


class UnitOfWorkMiddleware:
    """Pure ASGI: finishes the request's open read-write sessions as the response starts.

    Non-HTTP scopes pass straight through. A request that opened no read-write session costs a
    context variable and one check per message.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with its own session registry."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: list[AsyncSession] = []
        replaced = False

        async def finish_then_send(message: Message) -> None:
            nonlocal replaced
            sessions = pending[:]
            pending.clear()
            failure = await _finish(sessions, commit=message["status"] < 500)
            if failure is None:
                await send(message)
                return
            replaced = True
            await _send_error(send, failure)

        # A plain function: the common message goes to the server's own awaitable.
        def send_finishing(message: Message) -> Awaitable[None]:
            if replaced:
                return _dropped()
            if pending and message["type"] == "http.response.start":
                return finish_then_send(message)
            return send(message)

        token = _open.set(pending)
        try:
            await self.app(scope, receive, send_finishing)
        finally:
            _open.reset(token)


async def _dropped() -> None:
    """The original response's remaining messages, after an error answer replaced it."""


async def _finish(sessions: list[AsyncSession], *, commit: bool) -> BaseException | None:
    """Commit each session, or roll them all back; return the first commit's error, after
    rolling back the sessions not yet committed."""
    if not commit:
        await _roll_back(sessions)
        return None
    for i, session in enumerate(sessions):
        try:
            await session.commit()
        except Exception as exc:
            from core.database import COMMIT_FAILURE

            session.info[COMMIT_FAILURE] = exc
            await _roll_back(sessions[i:])
            return exc
    return None


async def _roll_back(sessions: list[AsyncSession]) -> None:
    # The answer is already decided; a rollback that fails leaves the session's own cleanup
    # (its dependency's exit) to discard the connection.
    for session in sessions:
        try:
            await session.rollback()
        except Exception:
            log.exception("rolling back a request session failed")


async def _send_error(send: Send, exc: BaseException) -> None:
    from core.http import error_response_for

    mapped = error_response_for(exc)
    if mapped is None:
        log.error("commit before the response failed", exc_info=exc)
        status, body, extra = 500, {"detail": "Internal Server Error"}, {}
    else:
        log.warning(
            "commit before the response failed (%s): answered %d",
            type(exc).__name__,
            mapped.status,
        )
        status, body, extra = mapped.status, mapped.body, mapped.headers
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in extra.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
