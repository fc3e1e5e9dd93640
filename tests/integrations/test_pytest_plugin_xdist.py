"""The pytest plugin under pytest-xdist: a small project's suite runs with `-n 2` inside this test
(pytester), against this run's servers. Each worker must get a database and Redis namespaces
of its own, and everything must be gone afterwards, also when a worker crashes or the run is
interrupted; without `-n` the plugin behaves as it always did."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from core.testing.workers import delete_keys, drop_databases

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

INI = """
[pytest]
addopts = -p no:cacheprovider
filterwarnings =
    error::ResourceWarning
    error::sqlalchemy.exc.SAWarning
"""

# Shared by the inner tests: the model, where each test reports what it used, and a barrier
# that holds a test until the same test on the other worker got as far (so both workers'
# writes exist at the same time, and would collide if anything were shared).
HELPERS = """
import json
import os
import time
import uuid
from pathlib import Path

from sqlalchemy import MetaData, String
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.models import NAMING_CONVENTION

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
REPORTS = Path(os.environ["DC_REPORTS"])


class MarkBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Mark(MarkBase):
    __tablename__ = "marks"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))


def record(settings, namespace=None):
    entry = {
        "worker": WORKER,
        "database": make_url(settings.database.url).database,
        "namespace": namespace,
    }
    (REPORTS / f"{uuid.uuid4().hex}.json").write_text(json.dumps(entry))


def barrier(name, timeout=120.0):
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        return
    (REPORTS / f"barrier-{name}-{WORKER}").touch()
    deadline = time.monotonic() + timeout
    while len(list(REPORTS.glob(f"barrier-{name}-*"))) < 2:
        assert time.monotonic() < deadline, f"the other worker never reached {name}"
        time.sleep(0.05)
"""

CONFTEST = """
import pytest

from helpers import MarkBase

pytest_plugins = ["core.testing.plugin"]


@pytest.fixture(scope="session")
def dualcore_metadata():
    return MarkBase.metadata
"""

# The same tests in two files; `--dist loadfile` sends each file to its own worker.
SIDE_TESTS = """
import pytest
from sqlalchemy import select

from helpers import WORKER, Mark, barrier, record

pytestmark = pytest.mark.anyio


async def test_1_rows_committed_for_real(dualcore_db, dualcore_settings):
    # A shared database would refuse the other worker's id 1, or show both rows.
    async with dualcore_db.get_session() as session:
        session.add(Mark(id=1, owner=WORKER))
    record(dualcore_settings)
    barrier("committed")
    async with dualcore_db.get_session(read_only=True) as session:
        assert list(await session.scalars(select(Mark.owner))) == [WORKER]


async def test_2_rows_in_the_tests_transaction(db_session, dualcore_settings):
    db_session.add(Mark(id=2, owner=WORKER))
    await db_session.commit()
    record(dualcore_settings)
    barrier("transaction")
    assert list(await db_session.scalars(select(Mark.owner).order_by(Mark.id))) == [WORKER] * 2


async def test_3_redis_keys(dualcore_redis, redis_namespace, dualcore_settings):
    assert dualcore_redis.settings.redis.key_prefix == redis_namespace
    await dualcore_redis.client.set(redis_namespace + "owner", WORKER)

    async def mine():
        return WORKER

    assert await dualcore_redis.get_or_set("owner", mine, ttl=60) == WORKER
    record(dualcore_settings, redis_namespace)
    barrier("redis")

    async def refuse():
        raise AssertionError("the cached value is gone")

    assert await dualcore_redis.client.get(redis_namespace + "owner") == WORKER.encode()
    assert await dualcore_redis.get_or_set("owner", refuse, ttl=60) == WORKER


async def test_4_the_next_test_sees_only_the_committed_row(db_session):
    assert list(await db_session.scalars(select(Mark.id))) == [1]
"""
SIDE_COUNT = 4

# A test that leaves a committed row and a Redis key, then takes its worker down with it.
LEAVE_TESTS = """
import os
import signal
import time

import pytest

from helpers import WORKER, Mark, record

pytestmark = pytest.mark.anyio


async def test_leave_things_behind(dualcore_db, dualcore_redis, redis_namespace, dualcore_settings):
    async with dualcore_db.get_session() as session:
        session.add(Mark(id=1, owner=WORKER))
    await dualcore_redis.client.set(redis_namespace + "left", WORKER)
    record(dualcore_settings, redis_namespace)
    if os.environ["DC_END"] == "crash":
        os._exit(3)
    time.sleep(120)  # the outer test interrupts the run meanwhile
"""


@pytest.fixture(scope="module", autouse=True)
def _driver_loaded_before_pytester(database_url: str) -> None:
    # pytester removes the modules first imported during its test; asyncpg's C extensions then
    # get imported a second time, which crashes. Connect once before any snapshot is taken.
    anyio.run(_databases, database_url, "postgres")


@pytest.fixture
def project(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> Iterator[Path]:
    """The inner project, pointed at this run's servers; yields its reports folder."""
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setenv("DUALCORE_TEST_DATABASE_URL", database_url)
    monkeypatch.setenv("DUALCORE_TEST_REDIS_URL", redis_url)
    monkeypatch.setenv("DC_REPORTS", str(reports))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(helpers=HELPERS)
    yield reports
    # The test has checked by now; this only keeps a failed or killed inner run from leaving
    # its databases and keys on the shared servers.
    for entry in _reports(reports):
        anyio.run(drop_databases, database_url, entry["database"])
        if entry["namespace"]:
            anyio.run(delete_keys, redis_url, entry["namespace"] + "*")


def _reports(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


async def _databases(server_url: str, prefix: str) -> list[str]:
    engine = create_async_engine(server_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT datname FROM pg_database WHERE left(datname, length(:p)) = :p"),
                {"p": prefix},
            )
            return [str(name) for name in rows.scalars()]
    finally:
        await engine.dispose()


async def _keys(redis_url: str, pattern: str) -> list[bytes]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=pattern, count=500)]
    finally:
        await client.aclose()


def _assert_all_gone(
    database_url: str, redis_url: str, entries: list[dict[str, Any]], run: str | None
) -> None:
    """None of the reported databases and namespaces exists any more, nor anything named
    after the run."""
    for name in {e["database"] for e in entries}:
        assert anyio.run(_databases, database_url, name) == [], f"database {name} was left"
    for namespace in {e["namespace"] for e in entries if e["namespace"]}:
        assert anyio.run(_keys, redis_url, namespace + "*") == [], f"keys under {namespace}"
    if run is not None:
        assert anyio.run(_keys, redis_url, f"*test-{run}-*") == []


def _xdist_names(database_url: str, entries: list[dict[str, Any]]) -> str:
    """Checks the per-worker names: `<database>_<run>_<worker>_<random>` and
    `<key_prefix>test-<run>-<worker>-<random>:`; returns the run id."""
    base = str(make_url(database_url).database)
    runs = set()
    for entry in entries:
        found = re.fullmatch(
            rf"{re.escape(base)}_([0-9a-f]{{10}})_{entry['worker']}_[0-9a-f]{{12}}",
            entry["database"],
        )
        assert found, entry
        runs.add(found.group(1))
        if entry["namespace"]:
            assert re.search(
                rf"test-{found.group(1)}-{entry['worker']}-[0-9a-f]{{12}}:$", entry["namespace"]
            ), entry
    assert len(runs) == 1, runs
    return runs.pop()


def test_each_worker_has_its_own_database_and_namespaces(
    pytester: pytest.Pytester, project: Path, database_url: str, redis_url: str
) -> None:
    body = textwrap.dedent(SIDE_TESTS)
    pytester.makepyfile(test_left=body, test_right=body)

    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadfile", timeout=300)

    result.assert_outcomes(passed=2 * SIDE_COUNT)
    entries = _reports(project)
    databases = {
        e["worker"]: {x["database"] for x in entries if x["worker"] == e["worker"]} for e in entries
    }
    assert sorted(databases) == ["gw0", "gw1"]  # both workers ran tests...
    assert all(len(names) == 1 for names in databases.values())  # ...one database each...
    assert databases["gw0"] != databases["gw1"]  # ...not the same one
    namespaces = [e["namespace"] for e in entries if e["namespace"]]
    assert len(namespaces) == len(set(namespaces)) == 2
    run = _xdist_names(database_url, entries)
    _assert_all_gone(database_url, redis_url, entries, run)


def test_a_crashed_workers_database_and_keys_are_dropped(
    pytester: pytest.Pytester,
    project: Path,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DC_END", "crash")
    pytester.makepyfile(
        test_crash=textwrap.dedent(LEAVE_TESTS),
        test_other=textwrap.dedent(SIDE_TESTS)
        .split("async def test_2")[0]
        .replace('barrier("committed")', ""),
    )

    result = pytester.runpytest_subprocess("-n", "2", "--dist", "load", timeout=300)

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*crashed while running*test_leave_things_behind*"])
    entries = _reports(project)
    crashed = [e for e in entries if e["namespace"]]
    assert len(crashed) == 1
    run = _xdist_names(database_url, entries)
    _assert_all_gone(database_url, redis_url, entries, run)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_run_leaves_nothing(
    pytester: pytest.Pytester,
    project: Path,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DC_END", "interrupt")
    leave = textwrap.dedent(LEAVE_TESTS)
    pytester.makepyfile(test_left=leave, test_right=leave)

    # Its own process group, as a terminal's foreground job: Ctrl-C reaches the controller and
    # its workers alike. SIGINT is restored to its default first: a run started in the
    # background by a shell without job control inherits it ignored, and Python then never
    # raises KeyboardInterrupt.
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile"],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 240
        while len(_reports(project)) < 2:  # both workers wrote and are now waiting
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the workers never got going"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()

    assert process.returncode == 2, output  # pytest's "interrupted"
    entries = _reports(project)
    assert sorted(e["worker"] for e in entries) == ["gw0", "gw1"]
    run = _xdist_names(database_url, entries)
    _assert_all_gone(database_url, redis_url, entries, run)


@pytest.mark.parametrize("xdist", ["loaded", "disabled"])
def test_without_n_the_plugin_is_unchanged(
    pytester: pytest.Pytester, project: Path, database_url: str, redis_url: str, xdist: str
) -> None:
    body = textwrap.dedent(SIDE_TESTS)
    pytester.makepyfile(test_left=body)
    args = ["-p", "no:xdist"] if xdist == "disabled" else []

    result = pytester.runpytest_subprocess(*args, timeout=300)

    result.assert_outcomes(passed=SIDE_COUNT)
    entries = _reports(project)
    assert {e["worker"] for e in entries} == {"main"}
    # One private database for the run and a namespace per test, named as before xdist.
    (name,) = {e["database"] for e in entries}
    assert re.fullmatch(rf"{re.escape(str(make_url(database_url).database))}_[0-9a-f]{{12}}", name)
    (namespace,) = [e["namespace"] for e in entries if e["namespace"]]
    assert re.fullmatch(r".*test-[0-9a-f]{12}:", namespace)
    _assert_all_gone(database_url, redis_url, entries, None)
