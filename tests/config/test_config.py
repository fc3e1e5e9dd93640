"""Settings: URL normalisation and validation, env and `.env` loading, secrets never shown."""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.asyncio.connection import parse_url as redis_parse_url
from sqlalchemy.engine import make_url

from core.config import DatabaseSettings, RedisSettings, Settings, get_settings
from core.urls import redact_url

CANARY = "s3cr3t-CANARY"

_GROUP_PREFIXES = ("APP_", "DATABASE", "REDIS", "CACHE_", "RESILIENCE_", "OBSERVABILITY_")

# --- strategies --------------------------------------------------------------------------------

# Any character a password may hold, except lone surrogates (not encodable in a URL at all).
passwords = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
users = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True)
hosts = hostnames | st.ip_addresses(v=4).map(str)
ports = st.none() | st.integers(1, 65535)
db_names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
pg_schemes = st.sampled_from(["postgres", "postgresql", "postgresql+asyncpg"])
bad_schemes = st.from_regex(r"[a-z][a-z0-9+.-]{0,10}", fullmatch=True).filter(
    lambda s: s not in {"postgres", "postgresql", "postgresql+asyncpg", "redis", "rediss", "unix"}
)
bad_ports = st.integers(max_value=0) | st.integers(min_value=65536, max_value=10**9)
# Characters that cannot be part of a host name (tabs and newlines are stripped by urlsplit).
bad_host_chars = st.sampled_from(list(' <>"{}|^`\\'))

fast = settings(max_examples=60, deadline=None)


def _netloc(user: str, password: str | None, host: str, port: int | None) -> str:
    auth = user + (":" + quote(password, safe="") if password is not None else "")
    return f"{auth}@{host}" + (f":{port}" if port is not None else "")


def _error_text(exc: ValidationError) -> str:
    """Everything a ValidationError shows without its inputs: str, repr and structured errors."""
    return " ".join([str(exc), repr(exc), json.dumps(exc.errors(include_input=False), default=str)])


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """An empty settings environment in an empty directory; the settings cache is reset."""
    for name in list(os.environ):
        if name.upper().startswith(_GROUP_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        yield monkeypatch
    finally:
        get_settings.cache_clear()


# --- PostgreSQL URLs -----------------------------------------------------------------------------


@fast
@given(pg_schemes, users, passwords, hosts, ports, db_names)
def test_pg_url_normalised_and_password_split(
    scheme: str, user: str, password: str, host: str, port: int | None, db: str
) -> None:
    raw = f"{scheme}://{_netloc(user, password, host, port)}/{db}"
    cfg = DatabaseSettings(url=raw)

    stored = make_url(cfg.url)
    assert stored.drivername == "postgresql+asyncpg"
    assert stored.password is None
    assert (stored.username, stored.host, stored.port, stored.database) == (user, host, port, db)
    assert cfg.password is not None
    assert cfg.password.get_secret_value() == password
    full = cfg.sqlalchemy_url()
    assert full.password == password
    assert (full.username, full.host, full.port, full.database) == (user, host, port, db)
    # Normalising again changes nothing.
    assert DatabaseSettings(url=cfg.url, password=cfg.password).url == cfg.url


@fast
@given(users, hosts, ports, db_names)
def test_pg_url_without_password(user: str, host: str, port: int | None, db: str) -> None:
    cfg = DatabaseSettings(url=f"postgresql://{_netloc(user, None, host, port)}/{db}")
    assert cfg.password is None
    assert cfg.sqlalchemy_url().password is None
    assert cfg.url.startswith("postgresql+asyncpg://")


@fast
@given(passwords)
def test_pg_password_in_query_is_split_out(password: str) -> None:
    cfg = DatabaseSettings(url=f"postgresql://u@h/d?sslmode=require&password={quote(password)}")
    stored = make_url(cfg.url)
    assert "password" not in stored.query
    assert stored.query["sslmode"] == "require"
    assert cfg.sqlalchemy_url().password == password


def test_pg_unix_socket_host_in_query_is_accepted() -> None:
    cfg = DatabaseSettings(url="postgresql://u@/d?host=/var/run/postgresql")
    assert make_url(cfg.url).query["host"] == "/var/run/postgresql"


def test_pg_ipv6_host() -> None:
    cfg = DatabaseSettings(url="postgres://u:pw@[::1]:5433/d")
    assert make_url(cfg.url).host == "::1"
    assert cfg.sqlalchemy_url().port == 5433


def test_explicit_password_wins_over_url_password() -> None:
    cfg = DatabaseSettings(url="postgresql://u:from-url@h/d", password="explicit")
    assert cfg.sqlalchemy_url().password == "explicit"


@fast
@given(bad_schemes, passwords)
def test_pg_bad_scheme_rejected_naming_the_field(scheme: str, password: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, database={"url": f"{scheme}://u:{quote(password)}@h/d"})
    (error,) = info.value.errors()
    assert error["loc"] == ("database",)
    assert "database URL must use postgresql://" in error["msg"]


@fast
@given(bad_ports)
def test_pg_bad_port_rejected(port: int) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, database={"url": f"postgresql://u@h:{port}/d"})
    (error,) = info.value.errors()
    assert error["loc"] == ("database",)
    assert "database URL" in error["msg"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h:abc/d",
        "postgresql://u@/d",
        "postgresql:///d",
        "postgresql://u@bad host/d",
        "postgresql://u@h<x>/d",
        "postgres-ql://u@h/d",
        "",
        "not a url",
    ],
)
def test_pg_invalid_urls_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, database={"url": url})
    (error,) = info.value.errors()
    assert error["loc"] == ("database",)
    assert "database URL" in error["msg"]


@fast
@given(hostnames, bad_host_chars, hostnames)
def test_pg_bad_host_rejected(left: str, bad: str, right: str) -> None:
    with pytest.raises(ValidationError, match="database URL"):
        DatabaseSettings(url=f"postgresql://u@{left}{bad}{right}:5432/d")


def test_replica_urls_normalised_from_comma_list() -> None:
    cfg = DatabaseSettings(
        url="postgresql://u@h/d", replica_urls="postgres://u@r1/d, postgres://u@r2/d"
    )
    assert [make_url(u).host for u in cfg.replica_urls] == ["r1", "r2"]
    assert all(u.startswith("postgresql+asyncpg://") for u in cfg.replica_urls)


# --- Redis URLs ----------------------------------------------------------------------------------


@fast
@given(
    st.sampled_from(["redis", "rediss"]),
    st.sampled_from(["", "user"]),
    passwords,
    hosts,
    ports,
    st.integers(0, 15),
)
def test_redis_url_password_split(
    scheme: str, user: str, password: str, host: str, port: int | None, db: int
) -> None:
    cfg = RedisSettings(url=f"{scheme}://{_netloc(user, password, host, port)}/{db}")
    assert cfg.password is not None
    assert cfg.password.get_secret_value() == password
    parsed = redis_parse_url(cfg.url)
    assert "password" not in parsed
    assert (parsed["host"], parsed.get("port"), parsed["db"]) == (host, port, db)
    assert parsed.get("username") == (user or None)
    assert RedisSettings(url=cfg.url, password=cfg.password).url == cfg.url


@fast
@given(passwords)
def test_redis_password_in_query_is_split_out(password: str) -> None:
    cfg = RedisSettings(url=f"redis://h:6379/0?password={quote(password)}&ssl_cert_reqs=none")
    assert cfg.password is not None
    assert cfg.password.get_secret_value() == password
    assert "password" not in cfg.url
    assert redis_parse_url(cfg.url)["ssl_cert_reqs"] == "none"


def test_redis_unix_socket_url() -> None:
    cfg = RedisSettings(url="unix:///tmp/redis.sock?db=3")
    parsed = redis_parse_url(cfg.url)
    assert parsed["path"] == "/tmp/redis.sock"
    assert parsed["db"] == 3
    assert parsed["connection_class"].__name__ == "UnixDomainSocketConnection"


def test_redis_tls_scheme_kept() -> None:
    assert RedisSettings(url="rediss://h:6380/1").url == "rediss://h:6380/1"


@fast
@given(bad_schemes)
def test_redis_bad_scheme_rejected_naming_the_field(scheme: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, redis={"url": f"{scheme}://h:6379/0"})
    (error,) = info.value.errors()
    assert error["loc"] == ("redis",)
    assert "Redis URL must use redis://" in error["msg"]


@fast
@given(bad_ports)
def test_redis_bad_port_rejected(port: int) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, redis={"url": f"redis://h:{port}/0"})
    (error,) = info.value.errors()
    assert error["loc"] == ("redis",)
    assert "Redis URL" in error["msg"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:abc/0",
        "redis://",
        "redis:///0",
        "redis://bad host:6379/0",
        "redis://h:6379/notanumber",
        "unix://",
        "http://h:6379/0",
        "",
    ],
)
def test_redis_invalid_urls_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, redis={"url": url})
    (error,) = info.value.errors()
    assert error["loc"] == ("redis",)
    assert "Redis URL" in error["msg"]


@fast
@given(hostnames, bad_host_chars, hostnames)
def test_redis_bad_host_rejected(left: str, bad: str, right: str) -> None:
    with pytest.raises(ValidationError, match="Redis URL"):
        RedisSettings(url=f"redis://{left}{bad}{right}:6379/0")


# --- redact_url ---------------------------------------------------------------------------------


@fast
@given(st.sampled_from(["postgresql+asyncpg", "redis", "rediss"]), users, passwords, hosts)
def test_redact_url_hides_password(scheme: str, user: str, password: str, host: str) -> None:
    secret = CANARY + password
    url = f"{scheme}://{user}:{quote(secret, safe='')}@{host}:1234/0?password={quote(secret)}"
    shown = redact_url(url)
    assert CANARY not in shown
    assert f"{user}:***@{host}:1234" in shown


@fast
@given(st.text())
def test_redact_url_never_raises(text: str) -> None:
    assert isinstance(redact_url(text), str)


# --- environment and .env -------------------------------------------------------------------------


def test_plain_env_names_and_nested_groups(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgres://app:pw@db.internal:5433/app")
    env.setenv("REDIS_URL", "rediss://:rpw@cache.internal:6380/2")
    env.setenv("DATABASE__POOL_SIZE", "20")
    env.setenv("REDIS__MAX_CONNECTIONS", "7")
    env.setenv("APP__ENVIRONMENT", "test")

    cfg = get_settings()
    assert cfg.database.url == "postgresql+asyncpg://app@db.internal:5433/app"
    assert cfg.database.sqlalchemy_url().password == "pw"
    assert cfg.database.pool_size == 20
    assert cfg.redis.url == "rediss://cache.internal:6380/2"
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == "rpw"
    assert cfg.redis.max_connections == 7
    assert cfg.app.environment == "test"


def test_get_settings_is_cached_until_cleared(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE__POOL_SIZE", "3")
    first = get_settings()
    env.setenv("DATABASE__POOL_SIZE", "4")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().database.pool_size == 4


def test_nested_url_wins_over_plain_name(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql://u@plain/d")
    env.setenv("DATABASE__URL", "postgresql://u@nested/d")
    assert make_url(get_settings().database.url).host == "nested"


@pytest.mark.parametrize("password", ["p@ss:w/rd?#%", "ü ñ €", "%41%2F", CANARY])
def test_env_url_with_encoded_password_comes_back_intact(
    env: pytest.MonkeyPatch, password: str
) -> None:
    env.setenv("DATABASE_URL", f"postgresql://u:{quote(password, safe='')}@h/d")
    env.setenv("REDIS_URL", f"redis://:{quote(password, safe='')}@h:6379/0")
    cfg = get_settings()
    assert cfg.database.sqlalchemy_url().password == password
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == password


def test_dotenv_file_is_read_and_env_wins(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgres://u:dotpw@from-dotenv:5432/d\n"
        "REDIS__KEY_PREFIX=svc:\n"
        "DATABASE__POOL_SIZE=5\n",
        encoding="utf-8",
    )
    env.setenv("DATABASE__POOL_SIZE", "6")
    cfg = get_settings()
    assert make_url(cfg.database.url).host == "from-dotenv"
    assert cfg.database.sqlalchemy_url().password == "dotpw"
    assert cfg.redis.key_prefix == "svc:"
    assert cfg.database.pool_size == 6


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("DATABASE__POOL_SIZE", "0", "database.pool_size"),
        ("DATABASE__POOL_SIZE", "many", "database.pool_size"),
        ("DATABASE__MAX_OVERFLOW", "-1", "database.max_overflow"),
        ("DATABASE__POOL_TIMEOUT", "0", "database.pool_timeout"),
        ("DATABASE__STATEMENT_TIMEOUT", "-1", "database.statement_timeout"),
        ("DATABASE__CONNECT_TIMEOUT", "1000", "database.connect_timeout"),
        ("REDIS__MAX_CONNECTIONS", "0", "redis.max_connections"),
        ("REDIS__SOCKET_TIMEOUT", "-0.5", "redis.socket_timeout"),
        ("REDIS__HEALTH_CHECK_INTERVAL", "99999", "redis.health_check_interval"),
        ("REDIS__KEY_PREFIX", "has space", "redis.key_prefix"),
        ("APP__ENVIRONMENT", "staging", "app.environment"),
        ("APP__STARTUP_TIMEOUT", "0", "app.startup_timeout"),
        ("APP__NAME", "", "app.name"),
    ],
)
def test_out_of_range_values_fail_naming_the_field(
    env: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        get_settings()
    (error,) = info.value.errors()
    assert ".".join(map(str, error["loc"])) == field
    assert field in str(info.value)


def test_unknown_nested_key_is_rejected(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE__POOLSIZE", "5")
    with pytest.raises(ValidationError, match=r"database\.poolsize"):
        get_settings()


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL"])
def test_embedded_refused_in_production(env: pytest.MonkeyPatch, name: str) -> None:
    env.setenv(name, "embedded")
    env.setenv("APP__ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="embedded servers are for development and tests"):
        get_settings()


def test_embedded_allowed_in_development(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "embedded")
    env.setenv("REDIS_URL", "EMBEDDED")
    cfg = get_settings()
    assert cfg.database.is_embedded
    assert cfg.redis.is_embedded
    assert not cfg.is_production


# --- secrets --------------------------------------------------------------------------------------


def test_secret_never_in_repr_str_or_dumps(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", f"postgresql://u:{CANARY}@h:5432/d")
    env.setenv("REDIS_URL", f"redis://:{CANARY}@h:6379/0")
    cfg = get_settings()
    shown = [
        repr(cfg),
        str(cfg),
        str(cfg.model_dump()),
        json.dumps(cfg.model_dump(mode="json")),
        cfg.model_dump_json(),
        repr(cfg.database),
        repr(cfg.redis),
        cfg.database.url,
        cfg.redis.url,
        repr(cfg.database.sqlalchemy_url()),
        str(cfg.database.sqlalchemy_url()),
    ]
    for text in shown:
        assert CANARY not in text
    # ...while the secret is still there for the drivers.
    assert cfg.database.sqlalchemy_url().password == CANARY


@pytest.mark.parametrize(
    "env_vars",
    [
        {"DATABASE_URL": f"postgresql://u:{CANARY}@h/d", "DATABASE__POOL_SIZE": "0"},
        {"REDIS_URL": f"redis://:{CANARY}@h/0", "REDIS__MAX_CONNECTIONS": "-3"},
        {"DATABASE_URL": f"postgresql://u:{CANARY}@h:99999/d"},
        {"DATABASE_URL": f"postgresql://u:{CANARY}@h:port/d"},
        {"DATABASE_URL": f"postgresql://u:{CANARY}@bad host/d"},
        {"DATABASE_URL": f"mysql://u:{CANARY}@h/d"},
        {"DATABASE_URL": "s3cr3tCANARY"},
        {"DATABASE_URL": f"{CANARY}@h/d"},
        {"REDIS_URL": f"redis://:{CANARY}@h:port/0"},
        {"REDIS_URL": f"http://:{CANARY}@h/0"},
        {"REDIS_URL": f"redis://:{CANARY}@h/db{CANARY}"},
        {"REDIS_URL": "s3cr3tCANARY:x"},
        {"DATABASE_URL": "embedded", "APP__ENVIRONMENT": "production", "REDIS_URL": CANARY},
    ],
)
def test_secret_never_in_validation_errors(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, env_vars: dict[str, str]
) -> None:
    for name, value in env_vars.items():
        env.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValidationError) as info:
        get_settings()
    # Case-insensitive: a scheme would be shown lower-cased.
    assert "canary" not in _error_text(info.value).lower()
    assert "canary" not in caplog.text.lower()


@fast
@given(st.text(string.ascii_letters + string.digits + "-_.~!$&'()*+,;=", min_size=4))
def test_secret_never_in_url_error(password: str) -> None:
    secret = CANARY + password
    for group, url in (
        ("database", f"postgresql://u:{secret}@h:0/d"),
        ("redis", f"redis://:{secret}@h:0/0"),
    ):
        with pytest.raises(ValidationError) as info:
            Settings(_env_file=None, **{group: {"url": url}})
        assert CANARY not in _error_text(info.value)
