"""No password from a settings URL is ever shown: not in reprs or dumps of valid settings, not in
any part of a validation error, not by `redact_url`, `dualcore check` or `DependencyUnavailable`.

Passwords are drawn from all printable characters and unicode and put in every URL form the
settings accept, percent-encoded and as people paste them (only `%` and `@` encoded, which URL
syntax cannot do without), valid or not. Each canary carries a marker made of letters that never
occurs in normal output and survives any encoding, so a match is a leak and never chance; a valid
URL must also hand the whole password to its secret field, which catches the cases where a part
of it would have been read as a port, path or query instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import ssl
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from core.cli import main
from core.config import DatabaseSettings, RedisSettings, Settings
from core.database import DatabaseManager
from core.redis_client import RedisManager
from core.runtime import Core, DependencyUnavailable, wait_until_ready
from core.urls import redact_url

MARK = "CaNaRyQz"
# Everything printable in any script; no control characters (environment variables cannot hold
# NUL, and URL parsers drop tabs and newlines) and no lone surrogates (not encodable).
_chars = st.characters(exclude_categories=("Cs", "Cc"))
_chunk = st.text(_chars, max_size=8)
canaries = st.tuples(_chunk, _chunk, _chunk).map(lambda t: f"{t[0]}{MARK}{t[1]}{MARK}{t[2]}")

SETTINGS_ENV = ("DATABASE", "REDIS", "APP_", "CACHE_", "RESILIENCE_", "OBSERVABILITY_")


def leaks(password: str, texts: list[str]) -> list[str]:
    """The texts that show the password, in any encoding, or its marker."""
    needles = {password, quote(password, safe=""), quote(password), quote_plus(password)}
    return [t for t in texts if MARK.lower() in t.lower() or any(n and n in t for n in needles)]


def error_texts(exc: ValidationError) -> list[str]:
    errors = exc.errors()
    return [str(exc), repr(exc), exc.json(), repr(errors), json.dumps(errors, default=str)]


def settings_texts(s: Settings) -> list[str]:
    db, r = DatabaseManager(s), RedisManager(s)
    texts = [repr(s), str(s), repr(s.model_dump()), s.model_dump_json()]
    texts += [json.dumps(s.model_dump(mode="json")), repr(s.database), repr(s.redis)]
    texts += [db.safe_url, r.safe_url, repr(db), repr(r)]
    return texts + [redact_url(u) for u in s.database.replica_urls]


@contextlib.contextmanager
def clean_env(**values: str) -> Iterator[None]:
    """Only the given settings variables in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith(SETTINGS_ENV):
                mp.delenv(name)
        for name, value in values.items():
            mp.setenv(name, value)
        yield


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- where a password can go ---------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """One place for a password in one URL; `{pw}` marks it."""

    template: str
    group: str  # "database", "redis" or "replica"
    field: str  # where a valid URL puts it: "password", "sentinel_password" or an option name
    valid: bool  # valid with the password percent-encoded
    query: bool = False  # in a query value: always percent-encoded

    def secret_of(self, s: Settings) -> str | None:
        """The secret a valid URL left in its field."""
        group: Any = s.redis if self.group == "redis" else s.database
        found: SecretStr | None
        if self.group == "replica":
            if self.field == "password":
                found = s.database.replica_passwords[1]
            else:
                found = s.database.replica_secret_options[1].get(self.field)
        elif self.field in ("password", "sentinel_password"):
            found = getattr(group, self.field)
        else:
            found = group.secret_options.get(self.field)
        return found.get_secret_value() if found is not None else None


PG = ["postgres", "postgresql", "postgresql+asyncpg"]
REDIS = ["redis", "rediss"]

FORMS = [
    *(
        Form(t.replace("SCHEME", scheme), "database", f, v, q)
        for scheme in PG
        for t, f, v, q in [
            ("SCHEME://u:{pw}@db.internal:5432/app", "password", True, False),
            ("SCHEME://u:{pw}@db.internal/app?application_name=svc", "password", True, False),
            ("SCHEME://u:{pw}@h:99999/app", "password", False, False),
            ("SCHEME://u:{pw}@h:port/app", "password", False, False),
            ("SCHEME://u:{pw}@bad host/app", "password", False, False),
            ("SCHEME://u:{pw}@/app", "password", False, False),
            ("SCHEME://u@h/app?sslmode=require&password={pw}", "password", True, True),
            ("SCHEME://u@h/app?Password={pw}", "password", True, True),
            ("SCHEME://u@h/app?ssl=require&sslpassword={pw}", "sslpassword", True, True),
            ("SCHEME://u@h/app?client_secret={pw}", "client_secret", True, True),
            ("SCHEME://u@h:99999/app?sslpassword={pw}", "sslpassword", False, True),
        ]
    ),
    Form("mysql://u:{pw}@h/app", "database", "password", False),
    *(
        Form(t.replace("SCHEME", scheme), "redis", f, v, q)
        for scheme in REDIS
        for t, f, v, q in [
            ("SCHEME://u:{pw}@cache.internal:6379/0", "password", True, False),
            ("SCHEME://:{pw}@cache.internal/3", "password", True, False),
            ("SCHEME://:{pw}@h:99999/0", "password", False, False),
            ("SCHEME://:{pw}@h:6379/notanumber", "password", False, False),
            ("SCHEME://:{pw}@bad host:6379/0", "password", False, False),
            ("SCHEME://h:6379/0?password={pw}", "password", True, True),
            ("SCHEME://h:6379/0?Password={pw}", "password", True, True),
            ("SCHEME://h:6379/0?ssl_password={pw}&ssl_cert_reqs=none", "ssl_password", True, True),
            ("SCHEME://h:6379/0?client_secret={pw}", "client_secret", True, True),
            ("SCHEME://h:6379/0?sentinel_password={pw}", "sentinel_password", False, True),
        ]
    ),
    Form("unix://u:{pw}@/run/redis.sock?db=1", "redis", "password", True),
    Form("unix:///run/redis.sock?db=1&password={pw}", "redis", "password", True, True),
    Form("http://:{pw}@h/0", "redis", "password", False),
    Form("redis+sentinel://u:{pw}@s1:26379,s2/mymaster/0", "redis", "password", True),
    Form(
        "redis+sentinel://s1,s2/mymaster?sentinel_password={pw}",
        "redis",
        "sentinel_password",
        True,
        True,
    ),
    Form("redis+sentinel://s1/mymaster?Password={pw}", "redis", "password", True, True),
    Form("redis+cluster://:{pw}@n1:7000,n2:7001", "redis", "password", True),
    Form("redis+sentinel://:{pw}@s1", "redis", "password", False),
    Form("redis+cluster://:{pw}@n1:70000", "redis", "password", False),
    Form("redis+cluster://n1?sentinel_password={pw}", "redis", "sentinel_password", False, True),
    Form("redis+cluster://n1?ssl_password={pw}", "redis", "ssl_password", False, True),
    Form("postgresql://u:{pw}@r1:5432/app", "replica", "password", True),
    Form("postgres://r1/app?sslpassword={pw}", "replica", "sslpassword", True, True),
    Form("postgresql://u:{pw}@r1:99999/app", "replica", "password", False),
    Form("mysql://u:{pw}@r1/app", "replica", "password", False),
]

OTHER_REPLICA = "postgresql://r0/app"


def place(form: Form, password: str, encoded: bool, comma_list: bool = False) -> str:
    if encoded or form.query:
        text = quote(password, safe="")
    else:
        text = password.replace("%", "%25").replace("@", "%40")
        if comma_list:
            text = text.replace(",", "%2C")
    return form.template.replace("{pw}", text)


def sources(form: Form) -> list[str]:
    """How the URL can be given: as an argument, or in one of its environment variables."""
    if form.group == "replica":
        return ["kwargs", "replica-json", "replica-comma"]
    return ["kwargs", f"{form.group.upper()}_URL", f"{form.group.upper()}__URL"]


def build(form: Form, url: str, source: str) -> Settings:
    """Settings from `url`, given the way `source` names."""
    if source == "kwargs":
        if form.group == "replica":
            return _from_env(database={"replica_urls": [OTHER_REPLICA, url]})
        return _from_env(**{form.group: {"url": url}})
    if source == "replica-json":
        return _from_env(DATABASE__REPLICA_URLS=json.dumps([OTHER_REPLICA, url]))
    if source == "replica-comma":
        return _from_env(DATABASE__REPLICA_URLS=f"{OTHER_REPLICA}, {url}")
    return _from_env(**{source: url})


def _from_env(**values: Any) -> Settings:
    """Settings from only the given environment variables (strings) and arguments (dicts)."""
    env = {k: v for k, v in values.items() if isinstance(v, str)}
    kwargs = {k: v for k, v in values.items() if not isinstance(v, str)}
    with clean_env(**env):
        return Settings(_env_file=None, **kwargs)


@settings(max_examples=300, deadline=None)
@given(
    where=st.sampled_from(FORMS).flatmap(
        lambda f: st.tuples(st.just(f), st.sampled_from(sources(f)))
    ),
    password=canaries,
    encoded=st.booleans(),
)
def test_any_password_in_any_url_form_is_never_shown(
    where: tuple[Form, str], password: str, encoded: bool
) -> None:
    form, source = where
    url = place(form, password, encoded, comma_list=source == "replica-comma")
    try:
        s = build(form, url, source)
    except ValidationError as exc:
        assert not (form.valid and (encoded or form.query)), f"{form.template} refused"
        texts = error_texts(exc)
    else:
        assert form.valid, f"{form.template} accepted"
        # The whole password reached its field: no part of it was read as anything else.
        assert form.secret_of(s) == password
        texts = settings_texts(s)
    texts.append(redact_url(url))
    assert leaks(password, texts) == []


@pytest.mark.parametrize(
    "values",
    [
        {"DATABASE__PASSWROD": f"{MARK}-typo"},
        {"REDIS__SENTINEL_PASWORD": f"{MARK}-typo"},
        {"DATABASE__REPLICA_PASSWORDS": json.dumps([f"{MARK}-1"]), "DATABASE__POOL_SIZE": "0"},
        {"DATABASE__SECRET_OPTIONS": json.dumps({"sslpassword": 7}), "DATABASE__URL": f"x{MARK}"},
    ],
)
def test_validation_errors_never_echo_secrets_given_under_wrong_names(
    values: dict[str, str],
) -> None:
    # A mistyped name is refused as unknown; what it held may be a password all the same.
    with pytest.raises(ValidationError) as info:
        _from_env(**values)
    assert leaks(MARK, error_texts(info.value)) == []


# --- secret query options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql://u@h/d?sslmode=require&sslpassword=S3CRET", "sslpassword"),
        ("postgresql://u@h/d?SSLPassword=S3CRET", "SSLPassword"),
        ("postgresql://u@h/d?client_secret=S3CRET", "client_secret"),
        ("postgresql://u@h/d?Secret_Key=S3CRET", "Secret_Key"),
    ],
)
def test_secret_query_options_leave_the_database_url(url: str, name: str) -> None:
    cfg = DatabaseSettings(url=url)
    assert "S3CRET" not in cfg.url
    assert name not in cfg.url
    assert cfg.secret_options[name].get_secret_value() == "S3CRET"
    assert "sslmode=require" in cfg.url or "sslmode" not in url
    for shown in (repr(cfg), cfg.model_dump_json(), repr(cfg.model_dump()), str(cfg)):
        assert "S3CRET" not in shown
    # Settings are copied by validating their dump again: the secret stays.
    again = DatabaseSettings.model_validate(cfg.model_dump())
    assert again.secret_options[name].get_secret_value() == "S3CRET"
    assert again.url == cfg.url


def test_password_query_option_is_the_password_in_any_case() -> None:
    cfg = DatabaseSettings(url="postgresql://u@h/d?Password=S3CRET")
    assert cfg.password is not None and cfg.password.get_secret_value() == "S3CRET"
    assert "S3CRET" not in cfg.url and "assword" not in cfg.url
    redis = RedisSettings(url="redis://h:6379/0?PASSWORD=S3CRET")
    assert redis.password is not None and redis.password.get_secret_value() == "S3CRET"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("rediss://h:6380/0?ssl_password=S3CRET&ssl_cert_reqs=none", "ssl_password"),
        ("redis://h:6379/0?Client_Secret=S3CRET", "Client_Secret"),
    ],
)
def test_secret_query_options_leave_the_redis_url(url: str, name: str) -> None:
    cfg = RedisSettings(url=url)
    assert "S3CRET" not in cfg.url and name not in cfg.url
    assert cfg.secret_options[name].get_secret_value() == "S3CRET"
    for shown in (repr(cfg), cfg.model_dump_json(), repr(cfg.model_dump())):
        assert "S3CRET" not in shown


def test_explicit_secret_options_win_over_the_url() -> None:
    cfg = DatabaseSettings(
        url="postgresql://u@h/d?sslpassword=from-url", secret_options={"sslpassword": "given"}
    )
    assert cfg.secret_options["sslpassword"].get_secret_value() == "given"


def test_sentinel_password_option_belongs_to_sentinel_urls() -> None:
    with pytest.raises(ValidationError, match="redis\\+sentinel://"):
        RedisSettings(url="redis://h:6379/0?sentinel_password=S3CRET")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@h/d?sslpassword=S3CRET&sslmode=require",
        "postgresql://u@h/d?SSLPassword=S3CRET",
        "rediss://h:6380/0?ssl_password=S3CRET",
        "redis://h/0?Password=S3CRET",
        "redis://h/0?client_secret=S3CRET&x=1",
        "redis+sentinel://h/m?sentinel_password=S3CRET",
        "postgresql://u@h/d?a=1&my%5Fsecret=S3CRET",
    ],
)
def test_redact_url_hides_secret_query_options(url: str) -> None:
    shown = redact_url(url)
    assert "S3CRET" not in shown
    assert shown.startswith(url.partition("?")[0].replace(":pw@", ":***@"))


# Unencoded delimiters in passwords: URL syntax reads part of them as port, path or query.
UNENCODED = [
    "postgresql://u:pa#M@h:99999/db",
    "postgresql://u:pa/M@h:port/db",
    "redis://u:pa/M@h:6379/0",
    "redis://u:1234#M@h/0",
    "redis://u:12?M=x@h:6379/0",
    "unix://:pa/M@/tmp/redis.sock",
    "redis+cluster://:pa?M=1@h:7000",
    "redis+sentinel://:M/x@h/mymaster",
    '["postgresql://u:pa/M@h:5432/d"]',
]


@pytest.mark.parametrize("url", [u.replace("M", MARK) for u in UNENCODED])
def test_redact_url_hides_unencoded_passwords(url: str) -> None:
    assert leaks(MARK, [redact_url(url)]) == []


@pytest.mark.parametrize("url", [u.replace("M", MARK) for u in UNENCODED if "redis" in u])
def test_unencoded_delimiter_in_a_redis_password_is_refused(url: str) -> None:
    # Accepted, a part of the password would be stored, and shown, as a port, path or option.
    with pytest.raises(ValidationError, match="percent-encode") as info:
        Settings(_env_file=None, redis={"url": url})
    assert leaks(MARK, error_texts(info.value)) == []


# --- the drivers still get them -----------------------------------------------------------------

# A client certificate whose key is encrypted with KEY_PASSPHRASE: loading it with any other
# passphrase fails, which shows whether a driver really received the secret option.
KEY_PASSPHRASE = "right-key-passphrase"
CLIENT_KEY = """-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHjME4GCSqGSIb3DQEFDTBBMCkGCSqGSIb3DQEFDDAcBAhEyrX9Rz6o1QICCAAw
DAYIKoZIhvcNAgkFADAUBggqhkiG9w0DBwQImahely0BlV4EgZBFhxSUBk6qSgEN
n7cFNEBY0txNCUvTMVOlCs7IkSyyyHt2AashpE8BuRylnGg54fGbOJLXPy3xYTXq
gVG2fuhjCtZea3aa9A1UE7wxAXzcGw8Fv0NfXlyPrxwl4XPKqocVatnii2j7hIZJ
A16oz0RuSVyhZcO0ImhkXRjBlaQqAgY+tJATIP2MHWxnDbRYCZI=
-----END ENCRYPTED PRIVATE KEY-----
"""
CLIENT_CERT = """-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUWSIVehys0mO/X4pus2yrjPhxsK4wCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNZHVhbGNvcmUtdGVzdDAgFw0yNjEyMDMxNzIwMjNaGA8yMTI2
MTEwOTE3MjAyM1owGDEWMBQGA1UEAwwNZHVhbGNvcmUtdGVzdDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABNjOffVs5vWJTLDfVli1s5bTs1IOX6ijJlhgGKZGoEAj
WCwmAG5ct2oHv55hSKnopkIOAcALVfJNdGB7H9pXjvCjUzBRMB0GA1UdDgQWBBRb
BXCoT3E2lASG3mP1jtYe8UgPgzAfBgNVHSMEGDAWgBRbBXCoT3E2lASG3mP1jtYe
8UgPgzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIDldKrPnp1+D
YPJ53vY71yy7dznVtZt495VcDC2OyvHhAiEAj8YV/YqB/yil1wjBakLT2/NuHBc7
zLpw0eUmWEz/lMc=
-----END CERTIFICATE-----
"""


@pytest.fixture
def client_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_text(CLIENT_CERT)
    key.write_text(CLIENT_KEY)
    key.chmod(0o600)
    return cert, key


async def _asyncpg_connect_error(url: str, replica: int | None) -> BaseException:
    # Through the manager's own engines, as an application connects.
    db = DatabaseManager(Settings(_env_file=None, database={"url": url, "replica_urls": [url]}))
    assert db.replicas is not None
    engine = db.read_engine if replica is None else list(db.replicas)[replica].engine
    try:
        async with engine.connect():
            pass
    except BaseException as exc:
        return exc
    finally:
        await db.close()
    raise AssertionError("connected to a closed port")


@pytest.mark.parametrize("replica", [None, 0])
@pytest.mark.parametrize("passphrase", [KEY_PASSPHRASE, "wrong-passphrase"])
def test_asyncpg_receives_sslpassword(
    client_cert: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    replica: int | None,
    passphrase: str,
) -> None:
    cert, key = client_cert
    monkeypatch.setenv("PGSSLCERT", str(cert))
    monkeypatch.setenv("PGSSLKEY", str(key))
    url = f"postgresql://u@127.0.0.1:{closed_port()}/d?ssl=require&sslpassword={passphrase}"
    assert passphrase not in DatabaseSettings(url=url).url
    error = asyncio.run(_asyncpg_connect_error(url, replica))
    if passphrase == KEY_PASSPHRASE:
        # asyncpg decrypted the key and went on to connect, which the closed port refused.
        assert isinstance(error, OSError) and not isinstance(error, ssl.SSLError), error
    else:
        assert isinstance(error, ssl.SSLError), error


@pytest.mark.parametrize("passphrase", [KEY_PASSPHRASE, "wrong-passphrase"])
def test_redis_py_receives_ssl_password(client_cert: tuple[Path, Path], passphrase: str) -> None:
    cert, key = client_cert
    url = (
        f"rediss://127.0.0.1:6380/0?ssl_certfile={cert}&ssl_keyfile={key}"
        f"&ssl_cert_reqs=none&ssl_password={passphrase}"
    )
    assert passphrase not in RedisSettings(url=url).url
    # The manager's own pool, as an application connects.
    manager = RedisManager(Settings(_env_file=None, redis={"url": url}))
    pool = manager.client.connection_pool
    assert pool.connection_kwargs["ssl_password"] == passphrase
    connection: Any = pool.make_connection()
    if passphrase == KEY_PASSPHRASE:
        assert isinstance(connection.ssl_context.get(), ssl.SSLContext)
    else:
        with pytest.raises(ssl.SSLError):
            connection.ssl_context.get()


# --- dualcore check ------------------------------------------------------------------------------

CHECK_FORMS = [
    ("DATABASE_URL", "postgresql://u:{pw}@127.0.0.1:{port}/app"),
    ("DATABASE_URL", "postgresql://u@127.0.0.1:{port}/app?sslpassword={pw}"),
    ("DATABASE_URL", "postgresql://u:{pw}@127.0.0.1:99999/app"),
    ("DATABASE__URL", "postgres://u:{pw}@127.0.0.1:{port}/app?application_name=x"),
    ("DATABASE__REPLICA_URLS", "postgresql://u:{pw}@127.0.0.1:{port}/app"),
    ("DATABASE__REPLICA_URLS", '["postgresql://u:{pw}@127.0.0.1:99999/app"]'),
    ("REDIS_URL", "redis://:{pw}@127.0.0.1:{port}/0"),
    ("REDIS_URL", "rediss://127.0.0.1:{port}/0?ssl_password={pw}"),
    ("REDIS_URL", "redis://u:{pw}@127.0.0.1:{port}/x"),
    ("REDIS__URL", "redis+sentinel://127.0.0.1:{port}/m?sentinel_password={pw}"),
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(form=st.sampled_from(CHECK_FORMS), password=canaries, as_json=st.booleans())
def test_dualcore_check_never_shows_a_password(
    form: tuple[str, str], password: str, as_json: bool
) -> None:
    name, template = form
    port = closed_port()
    value = template.replace("{port}", str(port)).replace("{pw}", quote(password, safe=""))
    env = {
        "DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/app",
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "DATABASE__CONNECT_TIMEOUT": "2",
        "REDIS__RETRY_ATTEMPTS": "0",
        "REDIS__SOCKET_CONNECT_TIMEOUT": "2",
        name: value,
    }
    out, err = io.StringIO(), io.StringIO()
    with clean_env(**env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["check", "--json"] if as_json else ["check"])
        except SystemExit as exc:
            status = exc.code
    # 2: invalid settings; 1: a dependency failed (nothing listens on the port).
    assert status in (1, 2), out.getvalue() + err.getvalue()
    if status == 1 and as_json:
        assert json.loads(out.getvalue())["dependencies"]
    assert leaks(password, [out.getvalue(), err.getvalue()]) == []


# --- DependencyUnavailable -----------------------------------------------------------------------

START_FORMS = [
    ("database", "postgresql://u:{pw}@127.0.0.1:{port}/app"),
    ("database", "postgresql://u@127.0.0.1:{port}/app?sslpassword={pw}&ssl=disable"),
    ("redis", "redis://u:{pw}@127.0.0.1:{port}/0"),
    ("redis", "rediss://127.0.0.1:{port}/0?ssl_password={pw}"),
    ("redis", "redis://127.0.0.1:{port}/0?client_secret={pw}"),
]


async def _start_failure(s: Settings) -> DependencyUnavailable:
    with pytest.raises(DependencyUnavailable) as info:
        async with Core(s):
            pass
    return info.value


@settings(max_examples=12, deadline=None)
@given(form=st.sampled_from(START_FORMS), password=canaries)
def test_dependency_unavailable_never_shows_a_password(
    form: tuple[str, str], password: str
) -> None:
    group, template = form
    port = closed_port()
    url = template.replace("{port}", str(port)).replace("{pw}", quote(password, safe=""))
    groups: dict[str, Any] = {
        "database": {"url": f"postgresql://u@127.0.0.1:{port}/app", "connect_timeout": 1},
        "redis": {"url": f"redis://127.0.0.1:{port}/0", "retry_attempts": 0},
    }
    groups[group]["url"] = url
    s = Settings(_env_file=None, app={"startup_timeout": 0.3}, **groups)
    error = asyncio.run(_start_failure(s))
    texts = [str(error), repr(error), error.url, "".join(traceback.format_exception(error))]
    assert leaks(password, texts) == []


class _Unreachable:
    """A resource whose failures quote its URL, password included, in some encoding."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message

    @property
    def safe_url(self) -> str:
        return self.url

    async def start(self) -> None:
        return None

    async def ping(self) -> float:
        raise ValueError(self.message)

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    "message",
    [
        "cannot use redis://:{enc}@h:6379/0",
        "password {plus} rejected",
        "auth with {enc} failed",
        "no route to postgresql://u:{raw}@h:5432/d (password rejected)",
    ],
)
def test_dependency_unavailable_hides_encoded_passwords_and_urls(message: str) -> None:
    password = f"p@ss w/{MARK}?&#%"
    text = message.format(enc=quote(password, safe=""), plus=quote_plus(password), raw=password)
    resource = _Unreachable("svc://u@h", text)

    async def wait() -> DependencyUnavailable:
        with pytest.raises(DependencyUnavailable) as info:
            await wait_until_ready("Service", resource, timeout=0.2, secrets=[password])
        return info.value

    error = asyncio.run(wait())
    assert "ValueError" in str(error)
    assert leaks(password, [str(error), repr(error)]) == []


def test_dependency_unavailable_redacts_the_url_it_is_given() -> None:
    error = DependencyUnavailable(
        "Service", f"redis://:{MARK}@h:6379/0?ssl_password={MARK}", 1.0, 2, "timed out"
    )
    assert leaks(MARK, [str(error), error.url]) == []
    assert "Service at redis://:***@h:6379/0" in str(error)


def test_start_up_masks_every_secret_of_the_primary_and_each_replica() -> None:
    from core.runtime import secrets_of

    settings = Settings(
        _env_file=None,
        database={
            "url": "postgresql://app:primary-pw@db/app?sslpassword=primary-ssl",
            "replica_urls": [
                "postgresql://app:first-pw@r1/app?sslpassword=first-ssl",
                "postgresql://app:second-pw@r2/app?sslpassword=second-ssl",
            ],
        },
        redis={"url": "redis://:redis-pw@cache:6379/0"},
    )
    assert set(secrets_of(settings)) == {
        "primary-pw",
        "primary-ssl",
        "first-pw",
        "first-ssl",
        "second-pw",
        "second-ssl",
        "redis-pw",
    }
