"""A canary password in the database and Redis URLs never shows up anywhere.

The Redis server is private and really requires the canary; PostgreSQL (trust auth) accepts
any password, so the canary travels through the whole connection path without being checked.
Every log record of every logger at DEBUG, stdout/stderr, HTTP responses (health, metrics,
errors), reprs and exception texts are searched for it.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from core.config import Settings
from core.database import DatabaseManager
from core.embedded import EmbeddedRedis
from core.http import error_response_for
from core.observability import metrics_response
from core.redis_client import RedisManager
from core.runtime import Core, DependencyUnavailable
from core.testing import asgi_lifespan
from tests.support.faultproxy import FaultProxy
from tests.support.frameworks import FRAMEWORKS

REPO = Path(__file__).resolve().parents[2]
MARK = "pw-CANARY-"
CANARY = f"{MARK}{uuid.uuid4().hex}"
# "core" drives the core directly (and runs in sessions without any framework).
MODES = ["core", *FRAMEWORKS]


# --- where the canary must not appear ------------------------------------------------------------


class Watch:
    """Every log record handled while active, plus texts the test adds."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, *items: object) -> None:
        for item in items:
            self.texts.append((where, item if isinstance(item, str) else repr(item)))

    def add_exception(self, where: str, exc: BaseException) -> None:
        self.add(where, str(exc), repr(exc), "".join(traceback.format_exception(exc)))

    def add_response(self, response: httpx.Response) -> None:
        self.add(
            f"{response.request.method} {response.request.url.path}",
            f"{response.status_code} {response.headers.multi_items()} {response.text}",
        )

    def leaks(self, *outputs: str) -> list[str]:
        """Where the canary (or any password made like it) appears, with context."""
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        texts = list(self.texts)
        for record in self.records:
            try:
                rendered = formatter.format(record)
            except Exception:  # a malformed record still gets its parts searched
                rendered = f"{record.msg!r} {record.args!r}"
            texts.append((f"log {record.name}", f"{rendered} {vars(record)!r}"))
        texts += [("output", out) for out in outputs]
        found = []
        for where, text in texts:
            for needle in (CANARY, MARK, quote(CANARY, safe="")):
                at = text.find(needle)
                if at >= 0:
                    found.append(f"{where}: ...{text[max(at - 120, 0) : at + 60]}...")
                    break
        return found


@contextmanager
def watching() -> Iterator[Watch]:
    """Route every record of every logger through `Watch`, at DEBUG; restore logging after.

    Records are taken in `Logger.handle`, before handlers and propagation, so loggers with
    `propagate=False` or no handler at all (the `lastResort` case) are covered too.
    """
    watch = Watch()
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    original = logging.Logger.handle

    def handle(self: logging.Logger, record: logging.LogRecord) -> None:
        watch.records.append(record)
        original(self, record)

    logging.Logger.handle = handle  # type: ignore[method-assign]
    try:
        yield watch
    finally:
        logging.Logger.handle = original  # type: ignore[method-assign]
        for lg, (level, handlers, propagate, disabled) in saved.items():
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.disabled = disabled


def debug_everything() -> None:
    """Every existing logger at DEBUG and enabled (apps may have reconfigured logging)."""
    logging.disable(logging.NOTSET)
    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(lg, logging.Logger):
            lg.setLevel(logging.DEBUG)
            lg.disabled = False


# --- servers and settings --------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private Redis that requires the canary as its password."""
    with EmbeddedRedis(tmp_path / "redis", password=CANARY) as server:
        yield server


def canary_pg_url(database_url: str, host: str, port: int) -> str:
    url = make_url(database_url)
    assert url.password is None, "the canary needs a server that trusts local connections"
    url = url.set(password=CANARY, host=host, port=port)
    return url.render_as_string(hide_password=False)


def canary_settings(
    pg_url: str, redis_url: str, startup_timeout: float = 5, **database: Any
) -> Settings:
    return Settings(
        _env_file=None,
        app={
            "name": f"dccanary-{uuid.uuid4().hex[:8]}",
            "environment": "development",
            "startup_timeout": startup_timeout,
            "shutdown_timeout": 5,
        },
        database={
            "url": pg_url,
            "echo": True,
            "pool_size": 2,
            "max_overflow": 0,
            "connect_timeout": 2,
            **database,
        },
        redis={"url": redis_url, "socket_timeout": 1, "socket_connect_timeout": 1},
    )


# --- a whole service session -------------------------------------------------------------------


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def describe(where: str, core: Core, watch: Watch) -> None:
    """The reprs and URLs a person or a log line might print."""
    s = core.settings
    watch.add(where, s, str(s), s.database, s.redis, s.model_dump(), s.model_dump_json())
    watch.add(where, core.db, core.redis, core.db.safe_url, core.redis.safe_url)
    for engine in (core.db.engine, core.db.read_engine):
        watch.add(where, str(engine.url), engine.url, engine, engine.pool, engine.pool.status())
    watch.add(where, core.redis.client, core.redis.client.connection_pool)


async def drive_http(
    framework: str, core: Core, proxy: FaultProxy, server: EmbeddedRedis, w: Watch
) -> None:
    """CRUD, health and metrics through the example app, then both dependencies failing."""
    app = importlib.import_module(f"examples.{framework}_app").create_app(core)
    debug_everything()  # after the app: Litestar configures logging when it is built
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://test")
    async with asgi_lifespan(app, phase_timeout=20), client:
        describe("started", core, w)

        async def do(method: str, path: str, status: int | None, **kw: Any) -> httpx.Response:
            response = await client.request(method, path, **kw)
            w.add_response(response)
            if status is not None:
                assert response.status_code == status, (path, response.text)
            return response

        uid = (
            await do("POST", "/users", 201, json={"email": "c@example.com", "name": "C"})
        ).json()["id"]
        await do("GET", f"/users/{uid}", 200)
        await do("GET", f"/users/{uid}/cached", 200)
        await do("GET", f"/users/{uid}/cached", 200)
        await do("PATCH", f"/users/{uid}", 200, json={"name": "C2"})
        await do("GET", "/users", 200)
        await do("POST", "/users", None, json={"email": "not-an-email", "name": ""})
        await do("GET", "/health/live", 200)
        await do("GET", "/health/ready", 200)
        metrics = await do("GET", "/metrics", 200)
        assert 'db_pool_size{pool="primary"}' in metrics.text

        proxy.cut()  # PostgreSQL unreachable
        down = await do("GET", f"/users/{uid}", 503)
        assert down.json()["dependency"] == "database"
        await do("GET", "/health/ready", 503)
        proxy.restore()

        await server.aclose()  # Redis gone
        ready = await do("GET", "/health/ready", 503)
        assert ready.json()["checks"]["redis"]["status"] != "ok"
        await do("GET", f"/users/{uid}/cached", None)
        await do("DELETE", f"/users/{uid}", None)
        await do("GET", "/metrics", 200)


async def drive_core(core: Core, proxy: FaultProxy, server: EmbeddedRedis, w: Watch) -> None:
    """The same session on the core alone: services, health, metrics, error mapping."""
    from examples.users import UserCreate, UserService, UserUpdate

    debug_everything()
    async with core:
        describe("started", core, w)
        async with core.db.get_session() as session:
            user = await UserService(session, core.redis.cache).create(
                UserCreate(email="c@example.com", name="C")
            )
        async with core.db.get_session(read_only=True) as session:
            service = UserService(session, core.redis.cache)
            w.add("read", await service.get(user.id), await service.get_cached_user(user.id))
            w.add("read", await service.list(limit=5, offset=0))
        async with core.db.get_session() as session:
            await UserService(session, core.redis.cache).update(user.id, UserUpdate(name="C2"))
        report = await core.health.run()
        assert report.ready
        w.add("health", report.to_dict(), metrics_response(core.metrics)[0].decode())

        proxy.cut()
        with pytest.raises((DBAPIError, OSError)) as caught:
            async with core.db.get_session(read_only=True) as session:
                await UserService(session, core.redis.cache).get(user.id)
        w.add_exception("database down", caught.value)
        mapped = error_response_for(caught.value)
        assert mapped is not None
        assert mapped.status == 503
        w.add("database down", mapped)
        report = await core.health.run()
        assert not report.ready
        w.add("database down", report.to_dict())
        proxy.restore()

        await server.aclose()
        report = await core.health.run()
        assert report.to_dict()["checks"]["redis"]["status"] != "ok"
        w.add("redis down", report.to_dict())
        with pytest.raises(redis.RedisError) as down:
            await core.redis.client.ping()
        w.add_exception("redis down", down.value)
        async with core.db.get_session(read_only=True) as session:
            w.add(
                "redis down", await UserService(session, core.redis.cache).get_cached_user(user.id)
            )
        w.add("redis down", metrics_response(core.metrics)[0].decode())


@pytest.mark.anyio
async def test_canary_never_shows_in_a_service_session(
    mode: str,
    database_url: str,
    pg_schema: str,
    redis_server: EmbeddedRedis,
    pg_proxy: FaultProxy,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from examples.users import User

    caplog.set_level(logging.DEBUG)
    pg_url = canary_pg_url(database_url, pg_proxy.host, pg_proxy.port)
    redis_url = f"redis://:{CANARY}@127.0.0.1:{redis_server.port}/0"
    s = canary_settings(pg_url, redis_url, search_path=pg_schema)

    async def create_tables(core: Core) -> None:
        await core.db.create_all(User.metadata)

    core = Core(s, on_startup=[create_tables])
    # Every probe runs the checks: the session cuts a dependency and asks again at once.
    core.health.cache_for = 0
    with watching() as watch:
        if mode == "core":
            await drive_core(core, pg_proxy, redis_server, watch)
        else:
            await drive_http(mode, core, pg_proxy, redis_server, watch)
    out, err = capfd.readouterr()
    # The session really ran: SQL was echoed, and access lines and errors were logged.
    assert "SELECT" in out
    names = {r.name for r in watch.records}
    assert "dualcore.health" in names
    if mode != "core":
        assert "dualcore.access" in names
    assert watch.leaks(out, err, caplog.text) == []


# --- failures before a service runs ------------------------------------------------------------


@pytest.mark.anyio
async def test_canary_never_shows_in_start_failures_and_settings_errors(
    database_url: str,
    redis_server: EmbeddedRedis,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good_pg = canary_pg_url(database_url, "127.0.0.1", make_url(database_url).port or 5432)
    dead_pg = canary_pg_url(database_url, "127.0.0.1", closed_port())
    wrong_redis = f"redis://:{CANARY}-wrong@127.0.0.1:{redis_server.port}/0"
    with watching() as watch:
        debug_everything()
        # Each dependency fails its start: a refused port (retried), a wrong password (not).
        # The refused port is retried until the bound; the wrong password fails at once, and
        # its roomy bound keeps a slow PostgreSQL on a busy machine from failing first.
        for pg_url, redis_url, failing, bound in (
            (dead_pg, f"redis://:{CANARY}@127.0.0.1:{redis_server.port}/0", "PostgreSQL", 0.5),
            (good_pg, wrong_redis, "Redis", 20.0),
        ):
            s = canary_settings(pg_url, redis_url, startup_timeout=bound)
            core = Core(s)
            with pytest.raises(DependencyUnavailable) as caught:
                await core.__aenter__()
            assert caught.value.dependency == failing
            watch.add_exception(f"{failing} start", caught.value)
            mapped = error_response_for(caught.value)
            assert mapped is not None and mapped.status == 503
            watch.add(f"{failing} start", mapped, caught.value.url)

        # Settings errors: an invalid field next to a URL with a password, from kwargs and env.
        attempts: list[Any] = [
            lambda: Settings(_env_file=None, database={"url": good_pg, "pool_size": 0}),
            lambda: Settings(_env_file=None, redis={"url": wrong_redis, "max_connections": 0}),
            lambda: Settings(
                _env_file=None, database={"url": good_pg.replace("@127", "@bad host")}
            ),
            lambda: Settings(_env_file=None, redis={"url": wrong_redis.replace("/0", ":x/0")}),
        ]
        for attempt in attempts:
            with pytest.raises(ValidationError) as invalid:
                attempt()
            watch.add_exception("settings", invalid.value)
        monkeypatch.setenv("DATABASE_URL", good_pg)
        monkeypatch.setenv("REDIS_URL", wrong_redis)
        monkeypatch.setenv("DATABASE__POOL_SIZE", "0")
        with pytest.raises(ValidationError) as invalid:
            Settings(_env_file=None)
        watch.add_exception("settings from env", invalid.value)
        # With valid URLs pydantic's structured errors carry only the invalid field's input.
        watch.add("settings errors", invalid.value.errors(), invalid.value.json())
    out, err = capfd.readouterr()
    assert watch.leaks(out, err) == []


def test_canary_never_shows_in_cli_check(
    database_url: str, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # One run: PostgreSQL refused (fails), Redis reached with the canary (passes).
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(
            ("DATABASE", "REDIS", "APP_", "CACHE_", "OBSERVABILITY_", "DUALCORE_")
        )
    }
    env = {
        "DATABASE_URL": canary_pg_url(database_url, "127.0.0.1", closed_port()),
        "REDIS_URL": f"redis://:{CANARY}@127.0.0.1:{redis_server.port}/0",
        "DATABASE__ECHO": "true",
        "DATABASE__CONNECT_TIMEOUT": "2",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-m", "core", "check"],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith(("PostgreSQL", "Redis"))
    }
    assert rows["PostgreSQL"] == "fail"
    assert rows["Redis"] == "ok"
    assert Watch().leaks(result.stdout, result.stderr) == []


# --- any password ------------------------------------------------------------------------------

# Printable, including the characters URLs must escape; the prefix keeps matches meaningful.
secret_chars = st.characters(min_codepoint=33, max_codepoint=126)
canaries = st.text(secret_chars, min_size=1, max_size=24).map(lambda s: f"{MARK}{s}")


@settings(max_examples=30, deadline=None)
@given(pg_password=canaries, redis_password=canaries)
def test_any_password_stays_out_of_reprs_and_errors(pg_password: str, redis_password: str) -> None:
    pg_url = f"postgresql://postgres:{quote(pg_password, safe='')}@127.0.0.1:5432/test"
    redis_url = f"redis://:{quote(redis_password, safe='')}@127.0.0.1:6379/0"
    s = Settings(_env_file=None, database={"url": pg_url}, redis={"url": redis_url})
    assert s.database.password is not None
    assert s.database.password.get_secret_value() == pg_password
    assert s.redis.password is not None
    assert s.redis.password.get_secret_value() == redis_password
    db, r = DatabaseManager(s), RedisManager(s)
    texts = [repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), repr(db), repr(r)]
    texts += [str(db.engine.url), repr(db.engine.url), repr(r.client), db.safe_url, r.safe_url]
    with pytest.raises(ValidationError) as invalid:
        Settings(_env_file=None, database={"url": pg_url, "pool_size": 0}, redis={"url": redis_url})
    texts += [str(invalid.value), repr(invalid.value), invalid.value.json()]
    for secret in (pg_password, redis_password):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            assert not [t for t in texts if form in t]
