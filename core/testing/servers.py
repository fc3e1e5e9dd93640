"""Which PostgreSQL and Redis a test run uses: the ones named in the environment, else the
local default ports when they answer, else embedded servers started for the run."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

__all__ = ["LOCAL_DATABASE_URL", "LOCAL_REDIS_URL", "testing_server_url"]

LOCAL_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"

_SOURCES = {
    "postgres": ("DUALCORE_TEST_DATABASE_URL", 5432, LOCAL_DATABASE_URL),
    "redis": ("DUALCORE_TEST_REDIS_URL", 6379, LOCAL_REDIS_URL),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def testing_server_url(kind: Literal["postgres", "redis"]) -> Iterator[str]:
    """The URL of a real server of `kind` for as long as the block runs:
    DUALCORE_TEST_DATABASE_URL / DUALCORE_TEST_REDIS_URL, else 127.0.0.1:5432 (`test`) /
    127.0.0.1:6379 when they answer, else an embedded server (password in the URL) deleted at
    the end."""
    variable, port, local = _SOURCES[kind]
    if url := os.environ.get(variable):
        yield url
        return
    if _reachable("127.0.0.1", port):
        yield local
        return
    from core.embedded import EmbeddedPostgres, EmbeddedRedis

    server_type = EmbeddedPostgres if kind == "postgres" else EmbeddedRedis
    with tempfile.TemporaryDirectory(prefix=f"dualcore-{kind}-", ignore_cleanup_errors=True) as d:
        server = server_type(Path(d) / "data")
        try:
            server.start()
            yield server.url
        finally:
            # Started by root, the server's files may live outside `d`: delete removes them.
            server.delete()
