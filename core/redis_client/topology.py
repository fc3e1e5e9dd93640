"""Redis Sentinel and Redis Cluster clients, configured by URL.

    redis+sentinel://[[user]:[password]@]host[:port][,host[:port]...]/service[/db]
    redis+cluster://[[user]:[password]@]host[:port][,host[:port]...]

The URLs are parsed in `core.urls` (re-exported here). The password in the URL is the one of the
data nodes (master and replicas, or cluster nodes); a Sentinel that needs its own password takes
it from `?sentinel_password=` (or `REDIS__SENTINEL_PASSWORD`). Both are moved out of the URL when
settings load, so the stored URL is safe to print.

Sentinel: the client asks the sentinels for the current master on every new connection and drops
connections to a master that was demoted, so commands follow a failover once it completes.
Cluster: `redis.asyncio.cluster.RedisCluster` discovers the nodes and follows MOVED/ASK
redirections; multi-key commands and Lua scripts need all their keys in one hash slot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.urls import (
    CLUSTER_SCHEME,
    SENTINEL_SCHEME,
    RedisTopology,
    is_topology_url,
    normalise_topology_url,
    parse_topology_url,
)

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
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
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
