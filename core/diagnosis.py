"""Why a dependency could not be used, in an operator's words: one classification for
`dualcore check` and for a failed start-up (`DependencyUnavailable`).

`diagnose(exc, dependency)` names the cause class (connection refused, timeout, authentication
failed, role or database missing, TLS required or refused, too many connections...), keeps the
server's own message with every secret taken out, and adds a one-line hint.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from core.urls import redact_urls_in

__all__ = ["Diagnosis", "diagnose", "scrub"]

_MAX_MESSAGE = 300

# What the operator sets, per dependency the core knows.
_SETTING = {"postgresql": "DATABASE_URL", "redis": "REDIS_URL"}


@dataclass(frozen=True)
class Diagnosis:
    """The cause class of a failure, the server's (or client's) message, and what to do."""

    cause: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.cause}: {self.message} (hint: {self.hint})"


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every secret (also in its URL-encoded forms) and URL password replaced."""
    for secret in secrets:
        if secret:
            # Drivers quote URLs and options in their errors, so encoded forms turn up too.
            forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
            for form in sorted(forms, key=len, reverse=True):
                text = text.replace(form, "***")
    return redact_urls_in(text)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the driver error SQLAlchemy wrapped (`orig`), and their causes."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        for nxt in (getattr(item, "orig", None), item.__cause__, item.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
        todo.extend(e for e in getattr(item, "exceptions", ()) if isinstance(e, BaseException))


def _text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # SQLAlchemy appends a documentation link on its own line.
    return text.splitlines()[0] if "\n(Background on this error" in text else text


def diagnose(exc: BaseException, dependency: str, secrets: Sequence[str] = ()) -> Diagnosis:
    """Classify `exc`, raised while connecting to `dependency` ("PostgreSQL", "Redis" or an
    application's own resource); `secrets` are kept out of the message."""
    setting = _SETTING.get(dependency.lower(), f"the {dependency} settings")
    found = _classify_postgres(exc, setting) if dependency.lower() == "postgresql" else None
    if found is None and dependency.lower() == "redis":
        found = _classify_redis(exc, setting)
    if found is None:
        found = _classify_network(exc, setting)
    if found is None:
        found = (
            "error",
            f"{type(exc).__name__}: {_text(exc)}",
            f"see the server's log; check {setting}",
        )
    cause, message, hint = found
    return Diagnosis(cause, scrub(message, secrets)[:_MAX_MESSAGE], hint)


def _classify_network(exc: BaseException, setting: str) -> tuple[str, str, str] | None:
    chain = list(_chain(exc))
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return (
                "connection refused",
                _text(item),
                f"is the server running and listening on that host and port? check {setting}",
            )
        if isinstance(item, socket.gaierror):
            return ("host not found", _text(item), f"check the host name in {setting}")
    for item in chain:
        if isinstance(item, (TimeoutError, asyncio.TimeoutError)) or type(item).__name__ in (
            "TimeoutError",
            "ConnectionTimeoutError",
        ):
            return (
                "timeout",
                _text(item) if str(item) else "no answer in time",
                f"the server accepted no connection or did not answer in time: is the host "
                f"right, is a firewall dropping packets, is the server overloaded? check {setting}",
            )
    for item in chain:
        if isinstance(item, ssl.SSLError):
            return (
                "TLS failed",
                _text(item),
                f"the TLS handshake failed: check the certificate and the ssl options of {setting}",
            )
    return None


def _classify_postgres(exc: BaseException, setting: str) -> tuple[str, str, str] | None:
    for item in _chain(exc):
        state = getattr(item, "sqlstate", None)
        if not isinstance(state, str) or type(item).__module__.startswith("sqlalchemy"):
            continue
        message = _text(item)
        if state == "28P01":
            return (
                "authentication failed",
                message,
                f"the server refused the password: check the user and password in {setting}",
            )
        if state == "28000":
            if "does not exist" in message:
                return (
                    "role missing",
                    message,
                    f"create it with CREATE ROLE ... LOGIN, or fix the user name in {setting}",
                )
            if "no encryption" in message:
                return (
                    "TLS required",
                    message,
                    f"the server accepts this client only over TLS: add ?ssl=require to {setting}",
                )
            return (
                "access refused",
                message,
                f"pg_hba.conf has no entry for this host, user and database: ask the "
                f"database's administrator, or check {setting}",
            )
        if state == "3D000":
            return (
                "database missing",
                message,
                f"create the database with createdb, or fix the database name in {setting}",
            )
        if state == "53300":
            return (
                "too many connections",
                message,
                "the server's max_connections (or the role's CONNECTION LIMIT) is used up: lower "
                "DATABASE__POOL_SIZE across the app's processes, use PgBouncer, or raise the limit",
            )
        if state.startswith("57P"):
            return (
                "server unavailable",
                message,
                "the server is starting, shutting down or in recovery: retry, or see its log",
            )
        return ("error", f"{message} (SQLSTATE {state})", f"see the server's log; check {setting}")
    for item in _chain(exc):
        if isinstance(item, ConnectionError) and "SSL upgrade" in str(item):
            return (
                "TLS refused",
                _text(item),
                f"the server does not accept TLS: remove ssl=require from {setting}, or turn "
                f"ssl on in the server's configuration",
            )
    return None


def _classify_redis(exc: BaseException, setting: str) -> tuple[str, str, str] | None:
    from redis.exceptions import AuthenticationError, ResponseError

    for item in _chain(exc):
        message = _text(item)
        lowered = message.lower()
        if isinstance(item, AuthenticationError) or "noauth" in lowered or "wrongpass" in lowered:
            # NOAUTH: "Authentication required.", or HELLO refused before AUTH (RESP3).
            if "required" in lowered or "already authenticated" in lowered:
                return (
                    "authentication required (NOAUTH)",
                    message,
                    f"the server requires a password: put it in {setting} as "
                    f"redis://:PASSWORD@host:port/0, or in REDIS__PASSWORD",
                )
            if "invalid username-password" in lowered or "wrongpass" in lowered:
                return (
                    "authentication failed (WRONGPASS)",
                    message,
                    f"the server refused the user name or password: check them in {setting}",
                )
            return ("authentication failed", message, f"check the password in {setting}")
        if "max number of clients" in lowered:
            return (
                "too many connections",
                message,
                "the server's maxclients is used up: lower REDIS__MAX_CONNECTIONS across the "
                "app's processes or raise maxclients",
            )
        if isinstance(item, ResponseError) and lowered.startswith("noperm"):
            return ("permission denied", message, f"the ACL user in {setting} lacks a command")
    return None
