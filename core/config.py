"""Validated settings, read from the environment and `.env`.

Nested groups use `__` as delimiter (`DATABASE__POOL_SIZE=20`); `DATABASE_URL` and `REDIS_URL`
also work as plain names. Passwords and secret query options (`sslpassword`, `ssl_password`...) are
split out of URLs into `SecretStr` fields at load time, so the stored URLs are safe to print, and no
repr, dump or validation error can reveal a secret: errors never echo a URL or a secret they were
given. In production both URLs must be set; the local defaults are for development.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from core.urls import (
    EMBEDDED,
    SplitURL,
    is_secret_option,
    is_topology_url,
    normalise_pg_url,
    normalise_redis_url,
    normalise_topology_url,
)

__all__ = [
    "EMBEDDED",
    "AppSettings",
    "CacheSettings",
    "DatabaseSettings",
    "ObservabilitySettings",
    "RedisSettings",
    "ResilienceSettings",
    "Settings",
    "get_settings",
]

Environment = Literal["development", "test", "production"]


class _Group(BaseModel):
    # Unknown keys are typos (DATABASE__POOLSIZE); inputs never appear in errors (they may be URLs
    # with passwords).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)


class AppSettings(_Group):
    """Identity and mode of the running service."""

    name: str = Field(
        "dualcore",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the service's name: PostgreSQL application_name, Redis client name",
    )
    environment: Environment = Field(
        "development",
        description="production requires both URLs and refuses embedded servers",
    )
    startup_timeout: float = Field(30.0, gt=0, le=600, description="total wait for dependencies")
    shutdown_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds allowed to close each resource at shutdown"
    )


class DatabaseSettings(_Group):
    """PostgreSQL connection and pool settings (asyncpg driver)."""

    url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        description="PostgreSQL URL, normalised to asyncpg; `embedded` starts a local server",
    )
    password: SecretStr | None = Field(None, description="taken out of `url` when it has one")
    # NoDecode: the validator takes a JSON list or a comma-separated list from the environment.
    replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="read-only sessions use these; JSON or comma list"
    )
    replica_passwords: list[SecretStr | None] = Field(
        default_factory=list, description="per replica; None uses `password`"
    )
    # Left out of reprs: they would show nothing but masked values.
    secret_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="secret URL query options (sslpassword...), taken out of `url`; JSON object",
        repr=False,
    )
    replica_secret_options: list[dict[str, SecretStr]] = Field(
        default_factory=list, description="per replica, taken out of its URL", repr=False
    )
    replica_cooloff: float = Field(
        5.0, gt=0, le=3600, description="seconds a replica that failed to connect is skipped"
    )
    pool_size: int = Field(10, ge=1, le=1000, description="connections kept open in the pool")
    max_overflow: int = Field(
        10, ge=0, le=1000, description="connections opened beyond `pool_size` under load"
    )
    pool_timeout: float = Field(5.0, gt=0, le=300, description="seconds to wait for a connection")
    pool_recycle: int = Field(1800, ge=-1, description="seconds; -1 never recycles")
    pool_pre_ping: bool = Field(
        False, description="check each connection with a round trip before handing it out"
    )
    statement_timeout: float = Field(30.0, ge=0, le=86400, description="seconds; 0 disables")
    command_timeout: float | None = Field(
        None, gt=0, le=86400, description="client-side bound; default statement_timeout + 5s"
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, description="seconds to open a connection")
    application_name: str | None = Field(
        None, max_length=63, description="shown in pg_stat_activity; default `app.name`"
    )
    search_path: str | None = Field(
        None,
        max_length=200,
        pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(, *[A-Za-z_][A-Za-z0-9_$]*)*$",
        description="schemas set at connect (not behind PgBouncer)",
    )
    echo: bool = Field(False, description="log every statement (SQLAlchemy's echo)")
    pgbouncer: bool = Field(
        False, description="behind PgBouncer: unnamed statements, no startup parameters"
    )

    @model_validator(mode="before")
    @classmethod
    def _split_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            # An unset URL stays unset (production refuses the default): only given ones are read.
            if "url" in data:
                _take_secrets(data, normalise_pg_url(data["url"]))
            (
                data["replica_urls"],
                data["replica_passwords"],
                data["replica_secret_options"],
            ) = _split_replicas(
                data.get("replica_urls", []),
                data.get("replica_passwords"),
                data.get("replica_secret_options"),
            )
        return data

    @property
    def is_embedded(self) -> bool:
        """True when the URL asks for an embedded server."""
        return self.url == EMBEDDED

    def sqlalchemy_url(self, url: str | None = None) -> URL:
        """The URL to connect with, password included (SQLAlchemy's URL masks it in repr/str)."""
        target = make_url(url or self.url)
        if self.password is not None and target.password is None:
            target = target.set(password=self.password.get_secret_value())
        return target

    def replica_sqlalchemy_url(self, index: int) -> URL:
        """The URL of replica `index`, with its own password or else the primary's."""
        target = make_url(self.replica_urls[index])
        own = self.replica_passwords[index] if index < len(self.replica_passwords) else None
        secret = own if own is not None else self.password
        if secret is not None and target.password is None:
            target = target.set(password=secret.get_secret_value())
        return target

    def secret_connect_args(self, replica: int | None = None) -> dict[str, Any]:
        """Arguments for `asyncpg.connect` that carry the secret query options of the URL, or of
        replica `replica`; merge them into the engine's `connect_args`. They go in a DSN, the
        only place asyncpg reads `sslpassword` from; the engine's URL never holds them."""
        if replica is None:
            options = self.secret_options
        elif replica < len(self.replica_secret_options):
            options = self.replica_secret_options[replica]
        else:
            options = {}
        values = {k: v.get_secret_value() for k, v in options.items() if v.get_secret_value()}
        return {"dsn": "postgresql://?" + urlencode(values)} if values else {}

    @property
    def effective_command_timeout(self) -> float | None:
        """Client-side timeout for one statement: bounds a hung server, not only a slow query."""
        if self.command_timeout is not None:
            return self.command_timeout
        return self.statement_timeout + 5.0 if self.statement_timeout else None


class RedisSettings(_Group):
    """Redis connection and pool settings."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://, rediss://, redis+sentinel://, redis+cluster:// or `embedded`",
    )
    password: SecretStr | None = Field(None, description="taken out of `url` when it has one")
    sentinel_password: SecretStr | None = Field(None, description="for redis+sentinel:// URLs")
    secret_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="secret URL query options (ssl_password...), taken out of `url`; JSON object",
        repr=False,
    )
    max_connections: int = Field(
        50, ge=1, le=10000, description="size of the connection pool (per node in a cluster)"
    )
    pool_timeout: float = Field(5.0, gt=0, le=300, description="seconds to wait for a connection")
    socket_timeout: float = Field(
        2.0, gt=0, le=300, description="seconds to wait for a command's reply"
    )
    socket_connect_timeout: float = Field(
        2.0, gt=0, le=300, description="seconds to open a connection"
    )
    health_check_interval: int = Field(
        30, ge=0, le=3600, description="idle seconds after which a connection is PINGed; 0 never"
    )
    retry_attempts: int = Field(
        3, ge=0, le=10, description="retries of a command after a connection error"
    )
    key_prefix: str = Field(
        "dualcore:",
        max_length=64,
        pattern=r"^[^\s*?\[\]{}]*$",
        description="prefix of every key the cache writes",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            data = dict(data)
            url = data["url"]
            if isinstance(url, str) and is_topology_url(url):
                data["url"], pw, sentinel_pw = normalise_topology_url(url)
                if sentinel_pw is not None and data.get("sentinel_password") is None:
                    data["sentinel_password"] = sentinel_pw
                if pw is not None and data.get("password") is None:
                    data["password"] = pw
            else:
                _take_secrets(data, normalise_redis_url(url))
        return data

    @property
    def is_embedded(self) -> bool:
        """True when the URL asks for an embedded server."""
        return self.url == EMBEDDED

    def secret_connection_kwargs(self) -> dict[str, str]:
        """The URL's secret query options as keyword arguments for redis-py's `from_url` (the
        stored URL no longer holds them)."""
        return {k: v.get_secret_value() for k, v in self.secret_options.items()}


class CacheSettings(_Group):
    """Cache behaviour on top of Redis."""

    enabled: bool = Field(True, description="false: every call runs the loader")
    namespace: str = Field(
        "cache",
        min_length=1,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="part of every key, after `redis.key_prefix`",
    )
    default_ttl: float = Field(
        300.0, gt=0, le=365 * 86400, description="seconds an entry lives unless a call says"
    )
    max_key_length: int = Field(
        200, ge=128, le=4096, description="longer keys keep their head and hash the rest"
    )
    codec: Literal["json", "msgspec"] = Field("json", description="how values are encoded")
    operation_timeout: float = Field(0.25, gt=0, le=30, description="bound on one cache call")
    lock_ttl: float = Field(10.0, gt=0, le=3600, description="cross-process fill lock lifetime")
    lock_wait: float = Field(5.0, ge=0, le=3600, description="max wait for another filler")
    early_refresh: float = Field(1.0, ge=0, le=10, description="XFetch beta; 0 disables")
    local_tier: bool = Field(
        False,
        description="also keep hits in process memory, invalidated by Redis (CLIENT TRACKING)",
    )
    local_max_entries: int = Field(
        10_000, ge=1, le=10_000_000, description="most entries the local tier holds"
    )
    local_max_bytes: int = Field(
        64 * 2**20, ge=4096, le=2**40, description="most bytes of keys and payloads it holds"
    )
    local_ttl: float = Field(
        30.0, gt=0, le=86400, description="longest a hit is served from memory, seconds"
    )
    local_heartbeat: float = Field(
        1.0,
        gt=0,
        le=60,
        description="silence before the invalidation connection is probed; "
        "a silent drop is caught within twice this",
    )


class ResilienceSettings(_Group):
    """Retry and circuit breaker policy."""

    retry_attempts: int = Field(3, ge=1, le=20, description="tries in all, the first included")
    retry_max_time: float = Field(
        5.0, gt=0, le=600, description="seconds after which no retry starts"
    )
    retry_base_delay: float = Field(
        0.05, gt=0, le=60, description="first backoff, seconds (full jitter, doubling)"
    )
    retry_max_delay: float = Field(1.0, gt=0, le=600, description="cap of one backoff, seconds")
    breaker_failure_threshold: int = Field(
        5, ge=1, le=1000, description="failures in a row that open a breaker"
    )
    breaker_reset_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds an open breaker fails fast before a probe"
    )
    breaker_half_open_max_calls: int = Field(
        1, ge=1, le=100, description="probes at once while half open"
    )


class ObservabilitySettings(_Group):
    """Logging, metrics and tracing."""

    log_format: Literal["json", "logfmt"] = Field("json", description="access log line format")
    access_log: bool = Field(True, description="one line per request on `dualcore.access`")
    metrics_enabled: bool = Field(True, description="false: no metrics counted or served")
    metrics_path: str = Field(
        "/metrics", pattern=r"^/[A-Za-z0-9/_-]*$", description="path of the metrics endpoint"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve metrics on this port only, not on the app's"
    )
    metrics_host: str = Field(
        "0.0.0.0", min_length=1, max_length=253, description="address for `metrics_port`"
    )
    request_id_header: str = Field(
        "X-Request-ID", pattern=r"^[A-Za-z0-9-]+$", description="header that carries the id"
    )
    slow_query_threshold: float = Field(0.5, ge=0, le=3600, description="seconds; 0 disables")
    log_query_parameters: bool = Field(
        False, description="statement parameters in slow-query logs and traces"
    )
    tracing: bool = Field(False, description="OpenTelemetry spans (`dualcore[tracing]`)")
    structlog: bool = Field(False, description="access and slow-query logs as structlog events")
    health_cache_ttl: float = Field(
        1.0, ge=0, le=60, description="seconds a readiness report is reused; 0 disables"
    )


class Settings(BaseSettings):
    """All settings of a dualcore service."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,
        validate_default=True,
    )

    app: AppSettings = Field(default_factory=AppSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    # Plain DATABASE_URL / REDIS_URL, folded into their groups and not kept as fields of their own.
    database_url: str | None = Field(None, exclude=True, repr=False)
    redis_url: str | None = Field(None, exclude=True, repr=False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # `str(exc)` already hides inputs; this also cleans `exc.errors()` and `exc.json()`,
            # which applications tend to log.
            raise _scrubbed(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _fold_plain_urls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for plain, group in (("database_url", "database"), ("redis_url", "redis")):
            value = data.pop(plain, None)
            if value:
                section = data.get(group)
                section = dict(section) if isinstance(section, dict) else {}
                section.setdefault("url", value)
                data[group] = section
        return data

    @model_validator(mode="after")
    def _real_servers_in_production(self) -> Settings:
        if self.app.environment != "production":
            return self
        problems = []
        for name, group in (("DATABASE_URL", self.database), ("REDIS_URL", self.redis)):
            if group.is_embedded:
                problems.append(
                    f"{name} is 'embedded': embedded servers are for development and tests only"
                )
            elif "url" not in group.model_fields_set:
                problems.append(
                    f"{name} is not set: the default {group.url} is for development only"
                )
        if problems:
            raise ValueError(
                "production needs DATABASE_URL and REDIS_URL set to real servers; "
                + "; ".join(problems)
            )
        return self

    @property
    def is_production(self) -> bool:
        """True in the production environment."""
        return self.app.environment == "production"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; `get_settings.cache_clear()` rereads them."""
    return Settings()


# --- secrets in validation errors --------------------------------------------------------------

_HIDDEN = "<hidden>"


def _scrub(value: Any, where: str = "") -> Any:
    """`value` without secrets or URLs; `where` names the field (or dict key) it was given for."""
    if is_secret_option(where):
        return "**********"
    if isinstance(value, dict):
        return {k: _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, where) for v in value]
    # A URL (even a malformed one) may hold a password anywhere; and whatever was put where a URL
    # belongs may well be the password itself.
    if isinstance(value, str) and ("url" in where.lower() or "://" in value or "@" in value):
        return _HIDDEN
    return value


def _scrubbed(exc: ValidationError) -> ValidationError:
    details: list[Any] = []
    for err in exc.errors():
        loc = err["loc"]
        where = ".".join(str(part) for part in loc if isinstance(part, str))
        # An unknown key is a typo of something, possibly of a password's name.
        shown = _HIDDEN if err["type"] == "extra_forbidden" else _scrub(err["input"], where)
        detail: dict[str, Any] = {"type": err["type"], "loc": loc, "input": shown}
        if "ctx" in err:
            detail["ctx"] = err["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details, hide_input=True)


def _take_secrets(data: dict[str, Any], split: SplitURL) -> None:
    """Store a normalised URL in `data` and its secrets in their fields; given ones win."""
    data["url"] = split.url
    if split.password is not None and data.get("password") is None:
        data["password"] = split.password
    given = data.get("secret_options")
    if split.secrets and (given is None or isinstance(given, dict)):
        data["secret_options"] = {**split.secrets, **(given or {})}


# --- replica lists ----------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        if value.strip().startswith("["):
            try:
                decoded = json.loads(value)
            except ValueError:
                raise ValueError("expected a JSON list or a comma-separated list") from None
            if not isinstance(decoded, list):
                raise ValueError("expected a JSON list or a comma-separated list")
            return decoded
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _split_replicas(
    raw_urls: Any, raw_passwords: Any, raw_options: Any
) -> tuple[list[str], list[Any], list[Any]]:
    """Normalise replica URLs; a secret in a URL wins over the one given for that replica."""
    urls: list[str] = []
    passwords: list[Any] = []
    options: list[Any] = []
    for raw in _as_list(raw_urls if raw_urls is not None else []):
        url, password, secrets = normalise_pg_url(raw)
        if url == EMBEDDED:
            raise ValueError("a replica URL cannot be 'embedded'")
        urls.append(url)
        passwords.append(password)
        options.append(secrets)
    given = _as_list(raw_passwords) if raw_passwords else []
    if given:
        if len(given) != len(urls):
            raise ValueError("replica_passwords needs one entry (or null) per replica URL")
        passwords = [p if p is not None else g for p, g in zip(passwords, given, strict=True)]
    given = _as_list(raw_options) if raw_options else []
    if given:
        if len(given) != len(urls):
            raise ValueError("replica_secret_options needs one entry per replica URL")
        options = [
            {**g, **o} if isinstance(g, dict) else g for o, g in zip(options, given, strict=True)
        ]
    return urls, passwords, options
