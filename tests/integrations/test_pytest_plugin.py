"""The pytest plugin, used the way an application uses it: a sample app's own suite runs inside
this test (pytester) against this run's servers, and must show per-test isolation."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.config import Settings
from core.database import DatabaseManager, ReadOnlySessionError
from core.testing import LifespanError, SavepointDatabaseManager, asgi_lifespan

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = [name for name in ("fastapi", "litestar") if importlib.util.find_spec(name)]

SAMPLE_APP = """
from typing import Any

from sqlalchemy import MetaData, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.models import NAMING_CONVENTION


class SampleBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Note(SampleBase):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


async def count_notes(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Note)) or 0)


def create_fastapi(core: Any) -> Any:
    from fastapi import FastAPI, HTTPException
    from integrations.fastapi import DbSession, ReadDbSession, install

    app = FastAPI(lifespan=core)
    install(app, core)

    @app.post("/notes", status_code=201)
    async def add(body: dict[str, str], session: DbSession, fail: bool = False) -> dict[str, int]:
        note = Note(text=body["text"])
        session.add(note)
        await session.flush()
        if fail:
            raise HTTPException(409, "refused after the insert")
        return {"id": note.id}

    @app.get("/notes/count")
    async def count(session: ReadDbSession) -> dict[str, int]:
        return {"count": await count_notes(session)}

    return app


def create_litestar(core: Any) -> Any:
    from litestar import Litestar, get, post
    from integrations.litestar import CorePlugin

    @post("/notes")
    async def add(data: dict[str, str], db_session: AsyncSession) -> dict[str, int]:
        note = Note(text=data["text"])
        db_session.add(note)
        await db_session.flush()
        return {"id": note.id}

    @get("/notes/count")
    async def count(read_session: AsyncSession) -> dict[str, int]:
        return {"count": await count_notes(read_session)}

    return Litestar([add, count], plugins=[CorePlugin(core)])
"""

SAMPLE_CONFTEST = """
import pytest

from sample_app import SampleBase, create_fastapi, create_litestar

pytest_plugins = ["core.testing.plugin"]


@pytest.fixture(scope="session")
def dualcore_metadata():
    return SampleBase.metadata


@pytest.fixture
def fastapi_app_factory():
    return create_fastapi


@pytest.fixture
def litestar_app_factory():
    return create_litestar
"""

CLIENT_TESTS = """
import pytest

from sample_app import count_notes

pytestmark = pytest.mark.anyio


async def test_1_a_row_committed_through_the_app(CLIENT, db_session):
    assert (await CLIENT.get("/health/ready")).status_code == 200  # the app's lifespan ran
    response = await CLIENT.post("/notes", json={"text": "kept until the test ends"})
    assert response.status_code == 201, response.text
    assert (await CLIENT.get("/notes/count")).json() == {"count": 1}
    assert await count_notes(db_session) == 1


async def test_2_is_not_seen_by_the_next_test(CLIENT, db_session):
    assert (await CLIENT.get("/notes/count")).json() == {"count": 0}
    assert await count_notes(db_session) == 0
"""

FASTAPI_EXTRA = """

async def test_3_a_failed_request_leaves_nothing(fastapi_client, db_session):
    response = await fastapi_client.post("/notes?fail=true", json={"text": "refused"})
    assert response.status_code == 409
    assert await count_notes(db_session) == 0
"""

SESSION_AND_REDIS_TESTS = """
import os

import pytest

from sample_app import Note, count_notes

pytestmark = pytest.mark.anyio
namespaces = []


def test_0_report_the_database(dualcore_settings):
    with open(os.environ["DC_REPORT"], "w") as f:
        f.write(dualcore_settings.database.url)


async def test_1_commit_through_the_session(db_session, dualcore_db):
    db_session.add(Note(text="committed"))
    await db_session.commit()
    assert await count_notes(db_session) == 1
    # Committed for the test, yet invisible outside its transaction.
    async with dualcore_db.get_session(read_only=True) as outside:
        assert await count_notes(outside) == 0


async def test_2_the_commit_is_gone(db_session):
    assert await count_notes(db_session) == 0


async def test_3_redis_writes(dualcore_redis, redis_namespace):
    assert dualcore_redis.settings.redis.key_prefix == redis_namespace
    await dualcore_redis.client.set(redis_namespace + "k", "1")
    namespaces.append(redis_namespace)


async def test_4_redis_is_isolated_and_cleaned(dualcore_redis, redis_namespace):
    assert redis_namespace != namespaces[0]
    assert await dualcore_redis.client.exists(namespaces[0] + "k") == 0


@pytest.mark.dualcore_settings(cache={"default_ttl": 7})
def test_5_settings_overrides(dualcore_test_settings, settings_override, dualcore_settings):
    assert dualcore_test_settings.cache.default_ttl == 7
    assert dualcore_settings.cache.default_ttl != 7
    assert settings_override(app={"shutdown_timeout": 3}).app.shutdown_timeout == 3
    assert dualcore_settings.app.environment == "test"
"""

MIGRATION_TESTS = """
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from examples.users.models import User

pytestmark = pytest.mark.anyio


async def test_1_schema_comes_from_the_migrations(db_session):
    version = await db_session.scalar(text("SELECT version_num FROM alembic_version"))
    assert version == "0001_users"
    db_session.add(User(email="ada@example.com", name="Ada"))
    await db_session.commit()


async def test_2_deferred_unique_is_checked_at_commit(db_session):
    db_session.add(User(email="ada@example.com", name="Ada"))
    await db_session.commit()  # test 1's row is gone
    db_session.add(User(email="ada@example.com", name="Ada again"))
    await db_session.flush()  # deferred: no error yet...
    with pytest.raises(IntegrityError):
        await db_session.commit()  # ...but at commit, as in production
    await db_session.rollback()
    assert await db_session.scalar(select(func.count()).select_from(User)) == 1
"""

INI = """
[pytest]
addopts = -p no:cacheprovider
filterwarnings =
    error::ResourceWarning
    error::sqlalchemy.exc.SAWarning
"""


@pytest.fixture(scope="module", autouse=True)
def _driver_loaded_before_pytester(database_url: str) -> None:
    # pytester removes the modules first imported during its test; asyncpg's C extensions then
    # get imported a second time, which crashes. Connect once before any snapshot is taken.
    anyio.run(database_exists, database_url, "postgres")


@pytest.fixture
def inner_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str, tmp_path: Path
) -> Path:
    """The inner run uses this run's servers; returns the file it reports its database in."""
    monkeypatch.setenv("DUALCORE_TEST_DATABASE_URL", database_url)
    monkeypatch.setenv("DUALCORE_TEST_REDIS_URL", redis_url)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    report = tmp_path / "database.txt"
    monkeypatch.setenv("DC_REPORT", str(report))
    return report


async def database_exists(server_url: str, name: str) -> bool:
    engine = create_async_engine(server_url)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
            )
    finally:
        await engine.dispose()
    return bool(found)


@pytest.mark.frameworks
def test_sample_app_suite_is_isolated_per_test(
    pytester: pytest.Pytester, inner_env: Path, database_url: str
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(SAMPLE_CONFTEST)
    files = {"sample_app": SAMPLE_APP, "test_session_and_redis": SESSION_AND_REDIS_TESTS}
    expected = 6
    if "fastapi" in FRAMEWORKS:
        files["test_fastapi_app"] = CLIENT_TESTS.replace("CLIENT", "fastapi_client") + FASTAPI_EXTRA
        expected += 3
    if "litestar" in FRAMEWORKS:
        files["test_litestar_app"] = CLIENT_TESTS.replace("CLIENT", "litestar_client")
        expected += 2
    pytester.makepyfile(**{name: textwrap.dedent(body) for name, body in files.items()})

    result = pytester.runpytest_subprocess("-q", timeout=180)

    result.assert_outcomes(passed=expected)
    # The run had a database of its own, dropped at the end.
    name = make_url(inner_env.read_text()).database
    assert name is not None
    assert name.startswith(f"{make_url(database_url).database}_")
    assert not anyio.run(database_exists, database_url, name)


def test_schema_from_migrations_and_deferred_constraints(
    pytester: pytest.Pytester, inner_env: Path
) -> None:
    pytester.makeini(
        INI + f"dualcore_schema = migrations\ndualcore_alembic_ini = {REPO / 'alembic.ini'}\n"
    )
    pytester.makeconftest('pytest_plugins = ["core.testing.plugin"]\n')
    pytester.makepyfile(test_users=MIGRATION_TESTS)

    result = pytester.runpytest_subprocess("-q", timeout=180)

    result.assert_outcomes(passed=2)


# --- the building blocks, in this process ------------------------------------------------------


@pytest.mark.anyio
async def test_savepoint_manager_keeps_everything_in_the_tests_transaction(
    database_url: str,
) -> None:
    parent = DatabaseManager(Settings(database={"url": database_url}))
    try:
        async with parent.engine.connect() as conn:
            outer = await conn.begin()
            await conn.execute(text("CREATE TEMP TABLE notes (body text PRIMARY KEY)"))
            db = SavepointDatabaseManager(parent, conn)
            await db.start()
            async with db.get_session() as session:
                session.add(TempNote(body="kept"))
            with pytest.raises(RuntimeError, match="boom"):
                await _write_then_fail(db)
            async with db.get_session(read_only=True) as session:
                assert list(await session.scalars(select(TempNote.body))) == ["kept"]
                session.add(TempNote(body="refused"))
                with pytest.raises(ReadOnlySessionError):
                    await session.flush()
            await db.close()
            assert conn.in_transaction()
            await outer.rollback()
        assert await parent.ping() > 0  # the parent's engines outlived the test manager
    finally:
        await parent.close()


async def _write_then_fail(db: DatabaseManager) -> None:
    async with db.get_session() as session:
        session.add(TempNote(body="rolled back"))
        await session.flush()
        raise RuntimeError("boom")


class _TempBase(DeclarativeBase):
    pass


class TempNote(_TempBase):
    __tablename__ = "notes"
    body: Mapped[str] = mapped_column(primary_key=True)


async def _raw_app(
    scope: MutableMapping[str, Any], receive: Any, send: Any, *, fail_on: str | None = None
) -> None:
    assert scope["type"] == "lifespan"
    while True:
        message = await receive()
        event = message["type"].removeprefix("lifespan.")
        if event == fail_on:
            await send({"type": f"lifespan.{event}.failed", "message": f"{event} broke"})
            return
        await send({"type": f"lifespan.{event}.complete"})
        if event == "shutdown":
            return


@pytest.mark.anyio
async def test_asgi_lifespan_runs_startup_and_shutdown() -> None:
    events: list[str] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        async def spy() -> Any:
            message = await receive()
            events.append(message["type"])
            return message

        await _raw_app(scope, spy, send)

    with anyio.fail_after(5):
        async with asgi_lifespan(app) as state:
            assert events == ["lifespan.startup"]
            assert state == {}
    assert events == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.anyio
@pytest.mark.parametrize("fail_on", ["startup", "shutdown"])
async def test_asgi_lifespan_reports_failures(fail_on: str) -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await _raw_app(scope, receive, send, fail_on=fail_on)

    with (
        anyio.fail_after(5),
        pytest.raises(LifespanError, match=f"{fail_on} failed: {fail_on} broke"),
    ):
        async with asgi_lifespan(app):
            pass


@pytest.mark.anyio
async def test_asgi_lifespan_names_an_app_without_lifespan_support() -> None:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        raise ValueError(f"unsupported scope {scope['type']}")

    with anyio.fail_after(5), pytest.raises(LifespanError, match="unsupported scope lifespan"):
        async with asgi_lifespan(app):
            pass
