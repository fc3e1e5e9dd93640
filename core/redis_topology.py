"""Redis Sentinel and Redis Cluster, configured by URL.

    redis+sentinel://[[user]:[password]@]host[:port][,host[:port]...]/service[/db]
    redis+cluster://[[user]:[password]@]host[:port][,host[:port]...]

Sentinel ports default to 26379, cluster ports to 6379. The password in the URL is the one of
the data nodes (master and replicas, or cluster nodes); a Sentinel that needs its own password takes
it from `?sentinel_password=` (or `REDIS__SENTINEL_PASSWORD`). Both are moved out of the URL when
settings load, so the stored URL is safe to print.

Sentinel: the client asks the sentinels for the current master on every new connection and drops
connections to a master that was demoted, so commands follow a failover once it completes.
Cluster: `redis.asyncio.cluster.RedisCluster` discovers the nodes and follows MOVED/ASK
redirections; multi-key commands and Lua scripts need all their keys in one hash slot.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import parse_qsl, quote, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from core.config import RedisSettings

__all__ = [
    "CLUSTER_SCHEME",
    "SENTINEL_SCHEME",
    "RedisTopology",
    "TopologyClient",
    "build_topology_client",
    "is_topology_url",
    "normalise_topology_url",
    "parse_topology_url",
]

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
_DEFAULT_PORTS = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379}
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SECRET_OPTIONS = ("password", "sentinel_password")


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


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def is_topology_url(url: str) -> bool:
    """True for `redis+sentinel://` and `redis+cluster://` URLs."""
    return _scheme(url.strip()) in _DEFAULT_PORTS


def _valid_host(host: str) -> bool:
    return bool(host) and all(c.isalnum() or c in "._-:%" for c in host)


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
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// or {CLUSTER_SCHEME}:// URL")
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
    default_port = _DEFAULT_PORTS[scheme]
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


# --- clients ---------------------------------------------------------------------------------


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel-managed connections with the blocking pool's bounded wait (as for one server)."""


@dataclass
class TopologyClient:
    """A client for a Sentinel- or Cluster-managed Redis, and how to close all it opened."""

    client: Redis
    """The client; for a cluster this is a `RedisCluster` (same command API, no pool object)."""
    topology: RedisTopology
    close: Callable[[], Awaitable[None]]


def build_topology_client(
    url: str, settings: RedisSettings, *, client_name: str | None = None
) -> TopologyClient:
    """Build the client for a `redis+sentinel://` or `redis+cluster://` URL with the pool,
    timeout and retry settings of `settings` (connections open lazily, on first command)."""
    topology, url_password, url_sentinel_password = parse_topology_url(url)
    password = settings.password.get_secret_value() if settings.password else url_password
    # Transient errors (a node restarting, a failover in progress) are retried with backoff;
    # the cap keeps one command bounded.
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), settings.retry_attempts)
    common: dict[str, Any] = {
        "username": topology.username,
        "password": password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": settings.health_check_interval,
        "client_name": client_name,
    }
    if topology.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            max_connections=settings.max_connections,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
            **common,
        )
        # Typed as the plain client: the command API is the same, which is what callers use.
        return TopologyClient(cast(Redis, cluster), topology, cluster.aclose)

    secret = settings.sentinel_password
    sentinel_password = secret.get_secret_value() if secret else url_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(topology.nodes),
        sentinel_kwargs={
            "password": sentinel_password,
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_connect_timeout,
            # The client moves on to the next sentinel itself; retrying a dead one (redis-py
            # backs off for seconds by default) would only delay finding the master.
            "retry": Retry(NoBackoff(), 0),
        },
    )
    assert topology.service is not None
    client: Redis = sentinel.master_for(
        topology.service,
        connection_pool_class=_BlockingSentinelPool,
        db=topology.db,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
        **common,
    )

    async def close() -> None:
        errors: list[BaseException] = []
        for each in (client, *sentinel.sentinels):
            try:
                await each.aclose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    return TopologyClient(client, topology, close)
