"""Private servers for the fault scenarios, and the figures table printed at the end.

The scenarios stop, pause and cut the servers they run against, so they start their own
PostgreSQL and Redis (never the machine's shared ones), once per session; every test leaves them
running and responsive for the next.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from core.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.faults.harness import FaultEnv, Figures, PgMonitor, RedisMonitor, table
from tests.support.frameworks import FRAMEWORKS

FIGURES = pytest.StashKey[list[Figures]]()

# Every scenario drives an example app, so without a framework there is nothing to run.
collect_ignore_glob = [] if FRAMEWORKS else ["test_fault_*.py"]

# The suite runs with warnings as errors to catch leaked connections: a Redis connection that a
# pool lost (rather than closed) is reported by redis-py's finalizer as a ResourceWarning, and
# fails the test that was running; connections still open at exit are counted per scenario on
# both servers (the leaked column). Deprecation notices that the frameworks' own dependencies
# raise at import time are not ours to fix (Litestar imports advanced-alchemy, which uses an API
# SQLAlchemy 2.1 deprecates).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    for _framework in FRAMEWORKS:
        importlib.import_module(_framework)


@pytest.fixture(scope="session")
def fault_dir() -> Iterator[Path]:
    """A directory for the servers' data, outside pytest's numbered temporary directories
    (which concurrent pytest runs on the same machine prune)."""
    path = Path(tempfile.mkdtemp(prefix="dcfault-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def private_pg(fault_dir: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of our own."""
    with EmbeddedPostgres(fault_dir / "pg", server_settings={"max_connections": "200"}) as server:
        yield server


@pytest.fixture(scope="session")
def private_redis(fault_dir: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of our own."""
    with EmbeddedRedis(fault_dir / "redis") as server:
        yield server


@pytest.fixture(autouse=True)
def servers_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hand each test that uses the private servers running ones, and bring them back if it left
    one down. The fault proxy's own tests use the shared servers and start none."""
    servers: list[EmbeddedPostgres | EmbeddedRedis] = [
        request.getfixturevalue(name)
        for name in ("private_pg", "private_redis")
        if name in request.fixturenames
    ]
    yield
    for server in servers:
        server.resume()
        if not server.is_running:
            server.start()


@pytest.fixture
async def monitor(private_pg: EmbeddedPostgres) -> AsyncIterator[PgMonitor]:
    """A direct connection to the private PostgreSQL, for watching and killing backends."""
    mon = PgMonitor(private_pg.url)
    try:
        yield mon
    finally:
        await mon.close()


@pytest.fixture
def schema() -> str:
    """A schema name private to one test (the service creates and drops it)."""
    return f"f_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    """Add a row to the session's figures table, then check its targets."""
    rows = request.config.stash.setdefault(FIGURES, [])

    def add(row: Figures) -> None:
        rows.append(row)
        row.check()

    return add


@pytest.fixture
def env(
    private_pg: EmbeddedPostgres,
    private_redis: EmbeddedRedis,
    monitor: PgMonitor,
    schema: str,
    record: Callable[[Figures], None],
) -> FaultEnv:
    """Everything a scenario needs, in one fixture."""
    return FaultEnv(
        private_pg, private_redis, monitor, RedisMonitor(private_redis.url), schema, record
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures of every scenario that ran."""
    rows = terminalreporter.config.stash.get(FIGURES, [])
    if not rows:
        return
    terminalreporter.section("fault injection figures")
    for line in table(rows):
        terminalreporter.write_line(line)
