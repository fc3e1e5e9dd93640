"""pytest-xdist support for the plugin: the controller gives every worker the run's servers
and a run id; each worker then names its database and Redis namespaces after the run and
itself, and the controller drops whatever is left under the run's names when the run ends,
also after a worker crashed or the run was interrupted.

Nothing here imports xdist: the controller is reached through the optional
`pytest_configure_node` hook, a worker is recognised by its `config.workerinput`.
"""

from __future__ import annotations

import sys
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import pytest
from redis.asyncio import Redis
from sqlalchemy import pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from core.testing.database import drop_database
from core.testing.servers import testing_server_url

__all__ = [
    "ControllerRun",
    "Worker",
    "database_prefix",
    "delete_keys",
    "drop_databases",
    "namespace_pattern",
    "namespace_tag",
    "worker_of",
]

_RUN = "dualcore_run"
_KINDS: tuple[Literal["postgres", "redis"], ...] = ("postgres", "redis")
_URLS = {"postgres": "dualcore_database_url", "redis": "dualcore_redis_url"}
# The sweep gives up rather than hold the end of the run hostage to a server that hangs.
_SWEEP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Worker:
    """This process as an xdist worker: the run's id and the worker's id (`gw0`...)."""

    run: str
    id: str
    database_url: str | None
    redis_url: str | None


def worker_of(config: pytest.Config) -> Worker | None:
    """The worker this process is, or None outside xdist (or when the controller did not
    load the plugin, so nothing was handed over)."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if not workerinput or _RUN not in workerinput:
        return None
    return Worker(
        run=str(workerinput[_RUN]),
        id=str(workerinput["workerid"]),
        database_url=workerinput.get(_URLS["postgres"]),
        redis_url=workerinput.get(_URLS["redis"]),
    )


def database_prefix(server_url: str | URL, run: str) -> str:
    """The start of every database name of the run: `<database>_<run>_` (each worker then
    adds `<worker id>_<random>`), short enough for PostgreSQL's 63-character names."""
    base = make_url(server_url).database or "postgres"
    return f"{base[:20]}_{run}_"


def namespace_tag(worker: Worker) -> str:
    """What a worker puts into its tests' Redis namespaces after `<key_prefix>test-`."""
    return f"{worker.run}-{worker.id}-"


def namespace_pattern(run: str) -> str:
    """A SCAN pattern matching every Redis key of the run, whatever `key_prefix` was."""
    return f"*test-{run}-*"


@dataclass
class ControllerRun:
    """The controller's side: one run id, the servers resolved once (an embedded server is
    then shared by the workers instead of started by each), and the sweep at the end."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    urls: dict[str, str] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)
    _resolved: bool = False

    def configure(self, workerinput: dict[str, Any]) -> None:
        """Hand the run id and the servers to a worker about to start."""
        if not self._resolved:
            self._resolved = True
            for kind in _KINDS:
                try:
                    self.urls[kind] = self._stack.enter_context(testing_server_url(kind))
                except Exception as exc:  # the workers resolve it and report it themselves
                    _report(f"no {kind} server for the workers: {type(exc).__name__}")
        workerinput[_RUN] = self.run
        for name, url in self.urls.items():
            workerinput[_URLS[name]] = url

    def close(self) -> None:
        """Drop the run's databases and Redis keys left behind, then stop what was started."""
        try:
            anyio.run(self._sweep)
        except Exception as exc:
            _report(f"could not drop what the run left: {type(exc).__name__}: {exc}")
        finally:
            self._stack.close()

    async def _sweep(self) -> None:
        with anyio.fail_after(_SWEEP_TIMEOUT):
            if url := self.urls.get("postgres"):
                await drop_databases(url, database_prefix(url, self.run))
            if url := self.urls.get("redis"):
                await delete_keys(url, namespace_pattern(self.run))


async def drop_databases(server_url: str | URL, prefix: str) -> list[str]:
    """Drop every database on the server whose name starts with `prefix`; return the names."""
    url = make_url(server_url).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT datname FROM pg_database WHERE left(datname, length(:p)) = :p"),
                {"p": prefix},
            )
            names = [str(name) for name in rows.scalars()]
    finally:
        await engine.dispose()
    for name in names:
        await drop_database(url.set(database=name), via=url)
    return names


async def delete_keys(redis_url: str, pattern: str) -> int:
    """Delete every key matching the SCAN `pattern`; return how many there were."""
    client = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=500)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        await client.aclose()


def _report(message: str) -> None:
    # Runs in pytest_unconfigure too, after the terminal reporter is gone.
    print(f"dualcore: {message}", file=sys.stderr)
