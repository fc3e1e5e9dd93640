"""pytest plugin: real PostgreSQL and Redis for an application's own tests, isolated per test.

Enable it in the suite's top-level `conftest.py`:

    pytest_plugins = ["core.testing.plugin"]

Servers come from DUALCORE_TEST_DATABASE_URL / DUALCORE_TEST_REDIS_URL, else PostgreSQL at
127.0.0.1:5432 (database `test`) and Redis at 127.0.0.1:6379 when reachable, else embedded
servers started for the run. By default the run gets a private database, created at start and
dropped at the end; each test then runs inside a transaction that is rolled back, and gets a
Redis key prefix of its own whose keys are deleted afterwards.

Async fixtures run on anyio's pytest plugin (mark tests with `@pytest.mark.anyio`); the
`anyio_backend` fixture here is session scoped, as the session-wide database requires.

ini options (pytest.ini / pyproject `[tool.pytest.ini_options]`):

- `dualcore_schema`: how tables are made once per run: `create_all` (default; the
  `dualcore_metadata` fixture's tables), `migrations` (Alembic upgrade to head) or `none`.
- `dualcore_alembic_ini`: the alembic.ini for `migrations` (default: `<rootdir>/alembic.ini`).
- `dualcore_fresh_database`: `false` runs in the given database itself instead of a private one.

Under pytest-xdist (`-n 2`) every worker gets its own private database and its own Redis
namespaces, named after the run and the worker; the controller resolves the servers once and,
when the run ends, drops whatever a crashed or interrupted worker left (see `workers`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core.config import Settings
from core.database import DatabaseManager
from core.redis_client import RedisManager
from core.runtime import Core
from core.testing.asgi import asgi_lifespan
from core.testing.database import (
    SavepointDatabaseManager,
    create_database,
    drop_database,
    savepoint_session,
)
from core.testing.servers import testing_server_url
from core.testing.workers import ControllerRun, database_prefix, namespace_tag, worker_of

SettingsOverride = Callable[..., Settings]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "dualcore_schema",
        "how dualcore_db creates the schema: create_all (default), migrations or none",
        default="create_all",
    )
    parser.addini(
        "dualcore_alembic_ini",
        "alembic.ini used when dualcore_schema = migrations (default: <rootdir>/alembic.ini)",
        default="",
    )
    parser.addini(
        "dualcore_fresh_database",
        "run in a private database created for the run and dropped after (default: true)",
        type="bool",
        default=True,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dualcore_settings(**groups): settings changes for this test's dualcore_core and "
        "dualcore_redis, e.g. @pytest.mark.dualcore_settings(cache={'enabled': False})",
    )


_CONTROLLER = pytest.StashKey[ControllerRun]()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent when xdist is not installed
def pytest_configure_node(node: Any) -> None:
    """In the xdist controller: give each worker the run id and the servers."""
    config: pytest.Config = node.config
    run = config.stash.get(_CONTROLLER, None)
    if run is None:
        run = config.stash[_CONTROLLER] = ControllerRun()
    run.configure(node.workerinput)


def pytest_unconfigure(config: pytest.Config) -> None:
    # After the workers are shut down (or killed): drop what any of them left behind.
    run = config.stash.get(_CONTROLLER, None)
    if run is not None:
        del config.stash[_CONTROLLER]
        run.close()


def override_settings(base: Settings, **groups: dict[str, Any]) -> Settings:
    """A validated copy of `base` with some fields of some groups changed:
    `override_settings(s, cache={"enabled": False}, app={"shutdown_timeout": 3})`."""
    update: dict[str, Any] = {}
    for name, changes in groups.items():
        current = getattr(base, name, None)
        if current is None or name not in type(base).model_fields:
            raise TypeError(f"Settings has no group {name!r}")
        merged = {**dict(current), **changes}
        update[name] = type(current).model_validate(merged)
    return base.model_copy(update=update)


# --- servers and the run's database -----------------------------------------------------------


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """asyncio, session wide (SQLAlchemy's asyncio engine and the run's database need it)."""
    return "asyncio"


@pytest.fixture(scope="session")
def dualcore_database_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The PostgreSQL server for the run: DUALCORE_TEST_DATABASE_URL, else the local server's
    `test` database when 127.0.0.1:5432 answers, else an embedded server (under xdist, the one
    the controller chose)."""
    worker = worker_of(pytestconfig)
    if worker is not None and worker.database_url is not None:
        yield worker.database_url
        return
    with testing_server_url("postgres") as url:
        yield url


@pytest.fixture(scope="session")
def dualcore_redis_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The Redis server for the run: DUALCORE_TEST_REDIS_URL, else 127.0.0.1:6379 when it
    answers, else an embedded server (under xdist, the one the controller chose)."""
    worker = worker_of(pytestconfig)
    if worker is not None and worker.redis_url is not None:
        yield worker.redis_url
        return
    with testing_server_url("redis") as url:
        yield url


@pytest.fixture(scope="session")
async def dualcore_settings(
    dualcore_database_url: str,
    dualcore_redis_url: str,
    pytestconfig: pytest.Config,
    anyio_backend: Any,
) -> AsyncIterator[Settings]:
    """Settings for the run: the environment's settings, pointed at the test servers (and at
    the run's private database, one per xdist worker), with `app.environment = "test"`."""
    fresh = bool(pytestconfig.getini("dualcore_fresh_database"))
    worker = worker_of(pytestconfig)
    if worker is not None and not fresh:
        raise pytest.UsageError(
            "dualcore_fresh_database = false cannot run under pytest-xdist: the workers "
            "would share one database"
        )
    database_url: Any = dualcore_database_url
    if fresh:
        prefix = None
        if worker is not None:
            prefix = database_prefix(dualcore_database_url, worker.run) + worker.id
        database_url = await create_database(dualcore_database_url, prefix=prefix)
    try:
        from_env: Any = Settings  # also reads the environment and .env, like the app
        settings: Settings = from_env(
            app={"environment": "test"},
            database={
                "url": database_url.render_as_string(hide_password=False)
                if fresh
                else database_url,
                "password": None,
            },
            redis={"url": dualcore_redis_url, "password": None},
        )
        yield settings
    finally:
        if fresh:
            await drop_database(database_url, via=dualcore_database_url)


@pytest.fixture(scope="session")
def dualcore_metadata() -> MetaData | None:
    """The metadata whose tables `dualcore_db` creates (`dualcore_schema = create_all`):
    `core.models.Base.metadata` unless overridden; import your models before it runs."""
    from core.models import Base

    return Base.metadata


@pytest.fixture(scope="session")
async def dualcore_db(
    dualcore_settings: Settings,
    dualcore_metadata: MetaData | None,
    pytestconfig: pytest.Config,
    anyio_backend: Any,
) -> AsyncIterator[DatabaseManager]:
    """A started `DatabaseManager` for the run, with the schema made once (see
    `dualcore_schema`). Its sessions commit for real: tests normally use `db_session`."""
    mode = str(pytestconfig.getini("dualcore_schema")).strip() or "create_all"
    if mode not in ("create_all", "migrations", "none"):
        raise pytest.UsageError(
            f"dualcore_schema must be create_all, migrations or none, got {mode!r}"
        )
    db = DatabaseManager(dualcore_settings)
    await db.start()
    created: list[Any] = []
    try:
        if mode == "create_all" and dualcore_metadata is not None:
            async with db.engine.begin() as conn:
                created = await conn.run_sync(_create_missing, dualcore_metadata)
        elif mode == "migrations":
            from core.migrations import upgrade_to_head

            ini = str(pytestconfig.getini("dualcore_alembic_ini")).strip()
            path = Path(ini) if ini else pytestconfig.rootpath / "alembic.ini"
            if not path.is_absolute():
                path = pytestconfig.rootpath / path
            await upgrade_to_head(db, config_file=path)
        yield db
        if created and dualcore_metadata is not None:
            # A shared database (dualcore_fresh_database = false) gets back what it had.
            async with db.engine.begin() as conn:
                await conn.run_sync(dualcore_metadata.drop_all, tables=created)
    finally:
        await db.close()


def _create_missing(connection: Connection, metadata: MetaData) -> list[Any]:
    inspector = inspect(connection)
    missing = [
        t for t in metadata.sorted_tables if not inspector.has_table(t.name, schema=t.schema)
    ]
    metadata.create_all(connection, tables=missing)
    return missing


# --- per test: database -----------------------------------------------------------------------


@pytest.fixture
async def db_connection(
    dualcore_db: DatabaseManager, anyio_backend: Any
) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back when the test ends."""
    async with dualcore_db.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            yield conn
        finally:
            if transaction.is_active:
                await transaction.rollback()


@pytest.fixture
async def db_session(
    db_connection: AsyncConnection, anyio_backend: Any
) -> AsyncIterator[AsyncSession]:
    """An `AsyncSession` in savepoint mode on the test's connection: `commit()` works and
    makes data visible to the app under test (same transaction), yet everything is rolled back
    at the end of the test."""
    session = savepoint_session(db_connection)
    try:
        yield session
    finally:
        await session.close()


# --- per test: settings and Redis -------------------------------------------------------------


@pytest.fixture
async def redis_namespace(
    dualcore_settings: Settings, pytestconfig: pytest.Config, anyio_backend: Any
) -> AsyncIterator[str]:
    """A Redis key prefix private to this test (`<key_prefix>test-<random>:`, under xdist
    `<key_prefix>test-<run>-<worker>-<random>:`); every key under it is deleted afterwards."""
    worker = worker_of(pytestconfig)
    tag = namespace_tag(worker) if worker is not None else ""
    prefix = f"{dualcore_settings.redis.key_prefix}test-{tag}{uuid.uuid4().hex[:12]}:"
    yield prefix
    cleaner = RedisManager(dualcore_settings)
    try:
        pattern = _glob_escape(prefix) + "*"
        keys = [key async for key in cleaner.client.scan_iter(match=pattern, count=500)]
        for start in range(0, len(keys), 500):
            await cleaner.client.delete(*keys[start : start + 500])
    finally:
        await cleaner.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@pytest.fixture
def settings_override(dualcore_settings: Settings) -> SettingsOverride:
    """A function building validated variants of the run's settings:
    `settings_override(cache={"enabled": False})` returns a new `Settings`."""

    def build(**groups: dict[str, Any]) -> Settings:
        return override_settings(dualcore_settings, **groups)

    return build


@pytest.fixture
def dualcore_test_settings(
    request: pytest.FixtureRequest, dualcore_settings: Settings, redis_namespace: str
) -> Settings:
    """This test's settings: the run's, with `redis.key_prefix` set to `redis_namespace` and
    the changes of a `@pytest.mark.dualcore_settings(...)` marker applied."""
    groups: dict[str, dict[str, Any]] = {}
    for marker in reversed(list(request.node.iter_markers("dualcore_settings"))):
        for name, changes in marker.kwargs.items():
            groups.setdefault(name, {}).update(changes)
    groups.setdefault("redis", {})["key_prefix"] = redis_namespace
    return override_settings(dualcore_settings, **groups)


@pytest.fixture
async def dualcore_redis(
    dualcore_test_settings: Settings, anyio_backend: Any
) -> AsyncIterator[RedisManager]:
    """A started `RedisManager` whose key prefix (used by its cache) is `redis_namespace`.
    Keys written through the raw `.client` are only isolated if you prefix them yourself."""
    manager = RedisManager(dualcore_test_settings)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


# --- per test: the core and test clients ------------------------------------------------------


@pytest.fixture
def dualcore_core(
    dualcore_db: DatabaseManager,
    db_connection: AsyncConnection,
    dualcore_redis: RedisManager,
    dualcore_test_settings: Settings,
) -> Core:
    """A `Core` for the app under test: its database sessions run inside this test's
    transaction (see `SavepointDatabaseManager`), its Redis is `dualcore_redis`.

    Not started: pass it to your app factory and let the app's lifespan start it (the client
    fixtures do), or `async with dualcore_core:` yourself.
    """
    db = SavepointDatabaseManager(dualcore_db, db_connection, settings=dualcore_test_settings)
    return Core(dualcore_test_settings, db=db, redis=dualcore_redis)


@pytest.fixture
def app_factory() -> Callable[[Core], Any]:
    """Override in your conftest: return the function that builds your app from a core,
    e.g. `return create_app` for `def create_app(core: Core) -> FastAPI`."""
    raise pytest.UsageError(
        "define an `app_factory` fixture returning your `create_app(core)` function "
        "(or `fastapi_app_factory` / `litestar_app_factory` when you test both)"
    )


@pytest.fixture
def fastapi_app_factory(app_factory: Callable[[Core], Any]) -> Callable[[Core], Any]:
    """The factory `fastapi_client` uses; defaults to `app_factory`."""
    return app_factory


@pytest.fixture
def litestar_app_factory(app_factory: Callable[[Core], Any]) -> Callable[[Core], Any]:
    """The factory `litestar_client` uses; defaults to `app_factory`."""
    return app_factory


async def _client(app: Any) -> AsyncIterator[Any]:
    import httpx

    async with asgi_lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def fastapi_client(
    fastapi_app_factory: Callable[[Core], Any], dualcore_core: Core, anyio_backend: Any
) -> AsyncIterator[Any]:
    """An `httpx.AsyncClient` for the FastAPI app built by `fastapi_app_factory(dualcore_core)`,
    with the app's lifespan running; requests share the test's transaction."""
    async for client in _client(fastapi_app_factory(dualcore_core)):
        yield client


@pytest.fixture
async def litestar_client(
    litestar_app_factory: Callable[[Core], Any], dualcore_core: Core, anyio_backend: Any
) -> AsyncIterator[Any]:
    """An `httpx.AsyncClient` for the Litestar app built by
    `litestar_app_factory(dualcore_core)`, with the app's lifespan running; requests share the
    test's transaction."""
    async for client in _client(litestar_app_factory(dualcore_core)):
        yield client
