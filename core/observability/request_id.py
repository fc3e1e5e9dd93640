"""Request ids: accept a well-formed incoming id or make one, echo it, expose it to logging."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token

from core.observability.asgi_types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_PATTERN",
    "RequestIdLogFilter",
    "RequestIdMiddleware",
    "RequestIdPolicy",
    "get_request_id",
    "is_valid_request_id",
    "new_request_id",
    "reset_request_id",
    "set_request_id",
]

REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"
"""Accepted incoming ids: 1-128 ASCII letters, digits and `._:-`.

Covers UUIDs (with or without dashes), ULIDs, hex trace ids and most proxy-generated ids, while
keeping ids safe to put verbatim into headers, JSON and logfmt lines (no spaces, quotes, `=`).
"""

_VALID = re.compile(REQUEST_ID_PATTERN.encode("ascii"))
_current: ContextVar[str | None] = ContextVar("dualcore_request_id", default=None)

_ERROR_BODY = b"Internal Server Error"


def get_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return _current.get()


def is_valid_request_id(value: str | bytes) -> bool:
    """True when `value` matches `REQUEST_ID_PATTERN`."""
    if isinstance(value, str):
        if not value.isascii():
            return False
        value = value.encode("ascii")
    return _VALID.fullmatch(value) is not None


_BATCH = 256
_ids: Iterator[str] = iter(())
_refill_lock = threading.Lock()


def new_request_id() -> str:
    """A fresh id: 128 random bits (from `os.urandom`) as 32 hex characters."""
    # Ids are cut from one `os.urandom` call per 256: in a busy server that system call costs
    # more than everything else about the id. `next` on a list iterator is atomic, so threads
    # never share an id; each is still 16 fresh bytes from the OS generator.
    request_id = next(_ids, None)
    return _refill() if request_id is None else request_id


def _refill() -> str:
    global _ids
    with _refill_lock:
        request_id = next(_ids, None)  # another thread may have refilled meanwhile
        if request_id is None:
            hexed = os.urandom(16 * _BATCH).hex()
            _ids = iter([hexed[i : i + 32] for i in range(32, len(hexed), 32)])
            request_id = hexed[:32]
    return request_id


def _forget_ids() -> None:
    # A forked child must not hand out the ids its parent still holds.
    global _ids, _refill_lock
    _ids = iter(())
    _refill_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ids)


class RequestIdPolicy:
    """How ids are read, made and returned; shared by `RequestIdMiddleware` and the full stack."""

    def __init__(
        self, header: str = "X-Request-ID", generator: Callable[[], str] = new_request_id
    ) -> None:
        if not header or not header.isascii() or not header.replace("-", "").isalnum():
            raise ValueError("request id header must be a token of ASCII letters, digits and '-'")
        self.header = header
        self.name = header.lower().encode("ascii")
        self.generator = generator

    def pick(self, scope: Scope) -> tuple[str, tuple[bytes, bytes]]:
        """The id for this request (the first incoming one if well-formed) and its header."""
        name = self.name
        for key, value in scope["headers"]:
            if key == name:
                if _VALID.fullmatch(value):
                    return value.decode("ascii"), (name, value)
                break
        request_id = self.generator()
        return request_id, (name, request_id.encode("latin-1"))

    def add_header(self, message: Message, header: tuple[bytes, bytes]) -> Message:
        """A response-start message with the id header, unless the app already set one."""
        headers = message.get("headers", ())
        name = self.name
        for key, _ in headers:
            if key.lower() == name:
                return message
        return {**message, "headers": [*headers, header]}

    @staticmethod
    async def send_error(send: Send, header: tuple[bytes, bytes]) -> None:
        """Answer a plain 500 carrying the id; errors while sending are ignored."""
        # The app's own exception matters more than failing to report it (client gone).
        with contextlib.suppress(Exception):
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(_ERROR_BODY)).encode("ascii")),
                        header,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _ERROR_BODY, "more_body": False})


def set_request_id(request_id: str | None) -> Token[str | None]:
    """Make `request_id` current (for code running outside the middleware, e.g. workers)."""
    return _current.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    """Undo `set_request_id`."""
    _current.reset(token)


class RequestIdMiddleware:
    """Pure ASGI middleware giving every HTTP request an id.

    The first incoming `header` is reused when it matches `REQUEST_ID_PATTERN`, otherwise
    `generator()` makes one. The id is available through `get_request_id()` while the request
    runs and is added to the response headers, unless the app already set that header. When the
    app raises before starting a response, this middleware answers a plain 500 carrying the id
    (the server would otherwise send one without it) and re-raises, so the error is still logged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "X-Request-ID",
        generator: Callable[[], str] = new_request_id,
    ) -> None:
        self.app = app
        self.policy = RequestIdPolicy(header, generator)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; non-HTTP scopes pass straight through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy
        request_id, header = policy.pick(scope)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = policy.add_header(message, header)
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not started:
                await policy.send_error(send, header)
            raise
        finally:
            _current.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` (None outside a request) to every record passing through.

    Attach it to handlers (filters on a logger do not see records propagated from child
    loggers), then use `%(request_id)s` in a format or `StructuredFormatter`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set `record.request_id` unless the caller passed one; never drops a record."""
        if not hasattr(record, "request_id"):
            record.request_id = _current.get()
        return True
