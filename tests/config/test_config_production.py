"""Production refuses the development defaults; settings that do nothing do not exist."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from core.cli import main
from core.config import AppSettings, DatabaseSettings, RedisSettings, Settings

SETTINGS_ENV = ("DATABASE", "REDIS", "APP_", "CACHE_", "RESILIENCE_", "OBSERVABILITY_")
DB = "postgresql://app@db.internal:5432/app"
REDIS = "redis://cache.internal:6379/0"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any settings variables."""
    for name in list(os.environ):
        if name.upper().startswith(SETTINGS_ENV):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, ["DATABASE_URL", "REDIS_URL"]),
        ({"REDIS_URL": REDIS}, ["DATABASE_URL"]),
        ({"DATABASE_URL": DB}, ["REDIS_URL"]),
        ({"DATABASE__URL": DB, "DATABASE__PASSWORD": "pw"}, ["REDIS_URL"]),
    ],
)
def test_production_without_urls_is_a_settings_error(
    env: pytest.MonkeyPatch, given: dict[str, str], missing: list[str]
) -> None:
    env.setenv("APP__ENVIRONMENT", "production")
    for name, value in given.items():
        env.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    message = str(info.value)
    assert "production needs DATABASE_URL and REDIS_URL" in message
    for name in missing:
        assert f"{name} is not set" in message
    for name in {"DATABASE_URL", "REDIS_URL"} - set(missing):
        assert f"{name} is not set" not in message


def test_production_without_urls_stops_dualcore_check_before_connecting(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("APP__ENVIRONMENT", "production")
    env.setenv("REDIS_URL", REDIS)
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL is not set" in err
    assert "127.0.0.1" in err  # names the default it refuses to use


def test_production_with_both_urls_is_valid(env: pytest.MonkeyPatch) -> None:
    env.setenv("APP__ENVIRONMENT", "production")
    env.setenv("DATABASE_URL", DB)
    env.setenv("REDIS__URL", REDIS)
    s = Settings(_env_file=None)
    assert s.is_production
    assert s.database.url == "postgresql+asyncpg://app@db.internal:5432/app"
    assert s.redis.url == REDIS


def test_production_with_groups_given_as_objects() -> None:
    s = Settings(
        _env_file=None,
        app={"environment": "production"},
        database=DatabaseSettings(url=DB),
        redis=RedisSettings(url=REDIS),
    )
    assert s.is_production
    with pytest.raises(ValidationError, match="DATABASE_URL is not set"):
        Settings(
            _env_file=None,
            app={"environment": "production"},
            database=DatabaseSettings(pool_size=5),
            redis=RedisSettings(url=REDIS),
        )


@pytest.mark.parametrize("environment", ["development", "test"])
def test_development_and_test_keep_the_local_defaults(
    env: pytest.MonkeyPatch, environment: str
) -> None:
    env.setenv("APP__ENVIRONMENT", environment)
    s = Settings(_env_file=None)
    assert s.database.url == "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    assert s.redis.url == "redis://127.0.0.1:6379/0"


def test_app_debug_is_gone(env: pytest.MonkeyPatch) -> None:
    # It switched nothing on; a leftover APP__DEBUG is refused like any unknown setting.
    assert "debug" not in AppSettings.model_fields
    env.setenv("APP__DEBUG", "true")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    (error,) = info.value.errors()
    assert error["loc"] == ("app", "debug")
    assert error["type"] == "extra_forbidden"
