"""Connection URLs: validated, normalised with their passwords taken out, and redacted for display.

PostgreSQL URLs are normalised to the asyncpg driver; Redis URLs are `redis://`, `rediss://` or
`unix://`, and Redis Sentinel and Redis Cluster are configured by URL too:

    redis+sentinel://[[user]:[password]@]host[:port][,host[:port]...]/service[/db]
    redis+cluster://[[user]:[password]@]host[:port][,host[:port]...]

Sentinel ports default to 26379, cluster ports to 6379. The password in the URL is the one of
the data nodes (master and replicas, or cluster nodes); a Sentinel that needs its own password takes
it from `?sentinel_password=`.

Every normaliser returns the URL without its secrets, and the secrets apart, so the URL is safe to
store and print: the password, whether in the user part or given as `?password=` (any case), and
every other secret query option, one whose name contains "password" or "secret" in any case
(`sslpassword`, `ssl_password`, `client_secret`...). Errors are `ValueError`s whose messages never
contain any part of the input beyond a scheme or option name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "CLUSTER_SCHEME",
    "EMBEDDED",
    "SENTINEL_SCHEME",
    "RedisTopology",
    "SplitURL",
    "is_secret_option",
    "is_topology_url",
    "normalise_pg_url",
    "normalise_redis_url",
    "normalise_topology_url",
    "parse_topology_url",
    "redact_url",
    "redact_urls_in",
]

EMBEDDED = "embedded"
"""URL value that asks for an embedded server (development and tests only)."""

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"

_PG_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_TOPOLOGY_PORTS = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379}
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,29}")
# A URL in free text (an exception message): up to whitespace, a quote or a parenthesis.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,29}://[^\s'\"<>()]*")
_ENCODE_IN_PASSWORDS = "percent-encode '@', '/', '?' and '#' in the user name and password"


class SplitURL(NamedTuple):
    """A URL with its secrets taken out."""

    url: str
    """The URL without password and secret options: safe to store and print."""
    password: str | None
    secrets: dict[str, str]
    """Secret query options by name as written (`sslpassword`, `ssl_password`...)."""


def is_secret_option(name: str) -> bool:
    """True for a URL query option that holds a secret: its name contains "password" or
    "secret", in any case."""
    lowered = name.lower()
    return "password" in lowered or "secret" in lowered


def redact_url(url: str) -> str:
    """`url` for display: its password and secret query options shown as `***`; never raises.

    A URL whose user part cannot be told from the rest, because an unencoded '/', '?', '#' or '@'
    in the password ends it early, is shown as its scheme alone; text that is not a URL but looks
    like the rest of one (`user:password@host`) is not shown at all.
    """
    try:
        return _redact(url.strip())
    except Exception:  # a display helper must never be what fails
        return "<unparseable url>"


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it redacted as `redact_url` does (for exception messages)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _redact(url: str) -> str:
    if "://" not in url:
        return "<not a URL>" if "@" in url else url
    scheme, _, rest = url.partition("://")
    if not _SCHEME.fullmatch(scheme):
        return "<not a URL>"
    authority, tail = _split_authority(rest)
    if "@" in tail:
        return f"{scheme}://***"
    if "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        authority = f"{user}:***@{hostport}" if colon else f"{user}@{hostport}"
    # A fragment means nothing to a driver; after an unencoded '#' it would be password text.
    path, question, query = tail.partition("#")[0].partition("?")
    if question:
        query = "&".join(_redact_option(part) for part in query.split("&"))
    return f"{scheme}://{authority}{path}{question}{query}"


def _redact_option(part: str) -> str:
    name = part.partition("=")[0]
    return f"{name}=***" if is_secret_option(unquote_plus(name)) else part


def _split_authority(rest: str) -> tuple[str, str]:
    """(authority, path/query/fragment) of what follows "://", split as RFC 3986 does."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    end = min(ends) if ends else len(rest)
    return rest[:end], rest[end:]


def _require_encoded_userinfo(raw: str, kind: str) -> None:
    # An '@' after the host means the user part held an unencoded '/', '?' or '#' (or '@'):
    # read as URL syntax, the rest of the password would become the port, path or an option.
    if "@" in _split_authority(raw.partition("://")[2])[1]:
        raise ValueError(f"{kind} URL has an '@' after its host: {_ENCODE_IN_PASSWORDS}")


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _valid_host(host: str) -> bool:
    # Names, IPv4 and IPv6 (with a zone id); rejects spaces and stray URL delimiters.
    return bool(host) and all(c.isalnum() or c in "._-:%" for c in host)


# --- PostgreSQL ----------------------------------------------------------------------------------


def normalise_pg_url(raw: Any) -> SplitURL:
    """Validate a PostgreSQL URL and normalise it to the asyncpg driver, secrets taken out."""
    if not isinstance(raw, str):
        raise ValueError("database URL must be a string")
    raw = raw.strip()
    if raw.lower() == EMBEDDED:
        return SplitURL(EMBEDDED, None, {})
    # Without "://" the whole value may be a pasted password: never echo it as a "scheme".
    scheme = _scheme(raw)
    if scheme not in _PG_SCHEMES:
        shown = scheme if scheme.replace("+", "").isalnum() and len(scheme) < 30 else "?"
        raise ValueError(
            f"database URL must use postgresql:// (or postgres://, postgresql+asyncpg://), "
            f"got scheme {shown!r}; or set it to 'embedded'"
        )
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ValueError("database URL is not a valid URL") from None
    if not url.host and "host" not in url.query:
        raise ValueError("database URL has no host")
    if url.host and not _valid_host(url.host):
        raise ValueError("database URL has an invalid host")
    try:
        port = url.port
    except ValueError:
        raise ValueError("database URL has an invalid port") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError("database URL has an invalid port")
    password = url.password
    query: dict[str, str | tuple[str, ...]] = {}
    secrets: dict[str, str] = {}
    for key, value in url.query.items():
        first = value if isinstance(value, str) else value[0]
        if key.lower() == "password":
            # asyncpg also takes `?password=`; the user part wins, as with libpq.
            password = password if password is not None else first
        elif is_secret_option(key):
            secrets[key] = first
        else:
            query[key] = value
    url = URL.create("postgresql+asyncpg", url.username, None, url.host, port, url.database, query)
    return SplitURL(url.render_as_string(hide_password=False), password, secrets)


# --- Redis ---------------------------------------------------------------------------------------


def normalise_redis_url(raw: Any) -> SplitURL:
    """Validate a redis://, rediss:// or unix:// URL, secrets taken out."""
    if not isinstance(raw, str):
        raise ValueError("Redis URL must be a string")
    raw = raw.strip()
    if raw.lower() == EMBEDDED:
        return SplitURL(EMBEDDED, None, {})
    scheme = _scheme(raw)
    if scheme not in _REDIS_SCHEMES:
        shown = scheme if scheme.isalnum() and len(scheme) < 30 else "?"
        raise ValueError(
            f"Redis URL must use redis://, rediss://, unix://, redis+sentinel:// or "
            f"redis+cluster://, got scheme {shown!r}; or set it to 'embedded'"
        )
    _require_encoded_userinfo(raw, "Redis")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ValueError("Redis URL is not a valid URL (bad port or brackets)") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// Redis URL needs a socket path")
    elif not parts.hostname:
        raise ValueError("Redis URL has no host")
    elif not _valid_host(parts.hostname):
        raise ValueError("Redis URL has an invalid host")
    if port == 0:
        raise ValueError("Redis URL is not a valid URL (bad port or brackets)")
    password = unquote(parts.password) if parts.password is not None else None
    kept = []
    secrets: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = key.lower()
        if name == "password":
            password = password if password is not None else value
        elif name == "sentinel_password":
            raise ValueError(f"sentinel_password is for {SENTINEL_SCHEME}:// URLs only")
        elif is_secret_option(key):
            secrets[key] = value
        else:
            kept.append((key, value))
    if scheme != "unix" and parts.path not in ("", "/"):
        db = parts.path.lstrip("/")
        if not db.isdigit():
            raise ValueError("Redis URL database must be a number (redis://host:6379/0)")
    netloc = ""
    if parts.username:
        netloc = quote(unquote(parts.username), safe="") + "@"
    if parts.hostname:
        host = parts.hostname
        netloc += f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    clean = urlunsplit((scheme, netloc, parts.path, urlencode(kept), ""))
    if scheme == "unix" and not netloc:
        # urlunsplit writes `unix:/path` for an empty authority; redis-py wants `unix:///path`.
        clean = "unix://" + clean[len("unix:") :]
    return SplitURL(clean, password, secrets)


# --- Redis Sentinel and Redis Cluster ------------------------------------------------------------


@dataclass(frozen=True)
class RedisTopology:
    """Where a Sentinel- or Cluster-managed Redis is found (no secrets)."""

    kind: Literal["sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    service: str | None = None
    db: int = 0
    username: str | None = None

    @property
    def url(self) -> str:
        """The canonical URL, without any password."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        if self.kind == "sentinel":
            return f"{SENTINEL_SCHEME}://{user}{hosts}/{self.service}/{self.db}"
        return f"{CLUSTER_SCHEME}://{user}{hosts}"


def is_topology_url(url: str) -> bool:
    """True for `redis+sentinel://` and `redis+cluster://` URLs."""
    return _scheme(url.strip()) in _TOPOLOGY_PORTS


def _parse_node(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("Redis URL has an invalid host")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ValueError("Redis URL has an invalid host (put IPv6 addresses in brackets)")
    else:
        host, _, port_text = text.partition(":")
    if not _valid_host(host):
        raise ValueError("Redis URL has an invalid host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("Redis URL has an invalid port")
    return host, int(port_text)


def parse_topology_url(raw: str) -> tuple[RedisTopology, str | None, str | None]:
    """Parse a Sentinel or Cluster URL into (topology, password, sentinel password).

    Raises `ValueError` with a message that never contains a password.
    """
    raw = raw.strip()
    scheme = _scheme(raw)
    if scheme not in _TOPOLOGY_PORTS:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// or {CLUSTER_SCHEME}:// URL")
    _require_encoded_userinfo(raw, "Redis")
    rest = raw.partition("://")[2]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    if not hostlist:
        raise ValueError("Redis URL has no host")
    default_port = _TOPOLOGY_PORTS[scheme]
    nodes = tuple(_parse_node(part.strip(), default_port) for part in hostlist.split(","))
    sentinel_password: str | None = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        name = key.lower()
        if name == "password":
            password = password if password is not None else value
        elif name == "sentinel_password" and scheme == SENTINEL_SCHEME:
            sentinel_password = value
        else:
            shown = key if key.replace("_", "").isalnum() and len(key) < 30 else "?"
            raise ValueError(f"Redis URL option {shown!r} is not supported with {scheme}://")
    segments = [s for s in path.split("/")] if slash else []
    if segments and segments[-1] == "":
        segments.pop()
    if scheme == SENTINEL_SCHEME:
        if not segments or not _SERVICE.match(segments[0]):
            raise ValueError(
                "Sentinel URL needs the master's service name: "
                "redis+sentinel://host:26379[,host:26379]/mymaster[/db]"
            )
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise ValueError("Sentinel URL database must be a number (.../mymaster/0)")
        db = int(segments[1]) if len(segments) == 2 else 0
        topology = RedisTopology("sentinel", nodes, segments[0], db, username)
    else:
        if segments not in ([], ["0"]):
            raise ValueError("Redis Cluster has only database 0; remove the path from the URL")
        topology = RedisTopology("cluster", nodes, None, 0, username)
    return topology, password, sentinel_password


def normalise_topology_url(raw: str) -> tuple[str, str | None, str | None]:
    """(canonical URL without passwords, password, sentinel password)."""
    topology, password, sentinel_password = parse_topology_url(raw)
    return topology.url, password, sentinel_password
