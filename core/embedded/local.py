"""Local development: `DATABASE_URL=embedded` / `REDIS_URL=embedded` start servers whose data
lives under `./.dualcore/` (mode 0700), with the port and password remembered there."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pydantic import SecretStr

from core.config import Settings
from core.embedded.accounts import private_dir
from core.embedded.errors import EmbeddedServerError
from core.embedded.postgres import EmbeddedPostgres
from core.embedded.processes import file_lock
from core.embedded.redis import EmbeddedRedis
from core.embedded.server import Server

__all__ = [
    "DEFAULT_BASE_DIR",
    "EmbeddedServers",
    "embedded_servers",
    "start_embedded",
    "start_embedded_postgres",
    "start_embedded_redis",
]

logger = logging.getLogger(__package__)

DEFAULT_BASE_DIR = ".dualcore"


def _refuse_production(settings: Settings) -> None:
    if settings.app.environment == "production":
        raise EmbeddedServerError(
            "embedded servers are for development and tests only; refusing to start one with "
            "APP__ENVIRONMENT=production (set DATABASE_URL and REDIS_URL to real servers)"
        )


def _base_dir(base_dir: Path | None) -> Path:
    """The base directory, created if missing and made private (0700): it holds passwords."""
    base = Path(base_dir if base_dir is not None else Path.cwd() / DEFAULT_BASE_DIR).absolute()
    return private_dir(base)


def _start_locked(server: EmbeddedPostgres | EmbeddedRedis, lock: Path, timeout: float) -> None:
    with file_lock(lock, timeout):
        server.start(timeout)


async def _start_in_thread(
    server: EmbeddedPostgres | EmbeddedRedis, lock: Path, limit: float
) -> None:
    try:
        await anyio.to_thread.run_sync(_start_locked, server, lock, limit)
    except BaseException:
        # Cancelled while the thread finished starting: do not leave the server behind.
        await server.aclose()
        raise


async def start_embedded_postgres(
    settings: Settings, base_dir: Path | None = None, *, start_timeout: float = 60
) -> tuple[EmbeddedPostgres, str]:
    """Start (or reuse) the development PostgreSQL under `base_dir/postgres`; return it and its URL.

    The URL carries the password (pass it to the driver, show `redact_url(url)`). Stop the
    server with `await server.aclose()`.
    """
    _refuse_production(settings)
    base = _base_dir(base_dir)
    server = EmbeddedPostgres(base / "postgres")
    await _start_in_thread(server, base / "postgres.lock", start_timeout)
    return server, server.url


async def start_embedded_redis(
    settings: Settings, base_dir: Path | None = None, *, start_timeout: float = 10
) -> tuple[EmbeddedRedis, str]:
    """Start (or reuse) the development Redis under `base_dir/redis`; return it and its URL.

    Unlike the test servers it keeps its data (append-only file). The URL carries the
    password. Stop the server with `aclose()`.
    """
    _refuse_production(settings)
    base = _base_dir(base_dir)
    server = EmbeddedRedis(base / "redis", extra_args=("--appendonly", "yes"))
    await _start_in_thread(server, base / "redis.lock", start_timeout)
    return server, server.url


class EmbeddedServers:
    """The embedded servers started for some settings, and the settings pointing at them.

    `async with` it to get the effective settings and stop the servers on exit.
    """

    def __init__(
        self,
        settings: Settings,
        postgres: EmbeddedPostgres | None = None,
        redis: EmbeddedRedis | None = None,
    ) -> None:
        self.settings = settings
        self.postgres = postgres
        self.redis = redis

    async def aclose(self) -> None:
        """Stop the servers (Redis first, then PostgreSQL), both even if one fails."""
        errors: list[Exception] = []
        for server in (self.redis, self.postgres):
            if server is not None:
                try:
                    await server.aclose()
                except Exception as exc:
                    if errors:
                        logger.error("could not stop %r", server, exc_info=exc)
                    errors.append(exc)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Settings:
        return self.settings

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _secret(server: Server) -> SecretStr | None:
    return SecretStr(server.password) if server.password is not None else None


async def start_embedded(settings: Settings, base_dir: Path | None = None) -> EmbeddedServers:
    """Start the servers whose URL is `embedded`, keeping data under `base_dir`.

    `base_dir` defaults to `./.dualcore`. Returns the servers and a copy of `settings` whose
    URLs point at them; with nothing embedded, the settings are returned unchanged. Raises
    `EmbeddedServerError` in production.
    """
    wants_pg, wants_redis = settings.database.is_embedded, settings.redis.is_embedded
    if not (wants_pg or wants_redis):
        return EmbeddedServers(settings)
    _refuse_production(settings)
    servers = EmbeddedServers(settings)
    update: dict[str, Any] = {}
    try:
        # The URLs stay password-free, as settings keep them; the password goes in its field.
        if wants_pg:
            servers.postgres, _url = await start_embedded_postgres(settings, base_dir)
            update["database"] = settings.database.model_copy(
                update={"url": servers.postgres.bare_url, "password": _secret(servers.postgres)}
            )
        if wants_redis:
            servers.redis, _url = await start_embedded_redis(settings, base_dir)
            update["redis"] = settings.redis.model_copy(
                update={"url": servers.redis.bare_url, "password": _secret(servers.redis)}
            )
    except BaseException:
        with contextlib.suppress(Exception):
            await servers.aclose()
        raise
    servers.settings = settings.model_copy(update=update)
    return servers


@asynccontextmanager
async def embedded_servers(
    settings: Settings, base_dir: Path | None = None
) -> AsyncIterator[Settings]:
    """`async with embedded_servers(settings) as effective:` starts, yields settings, stops."""
    servers = await start_embedded(settings, base_dir)
    async with servers as effective:
        yield effective
