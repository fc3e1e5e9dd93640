"""Redis Cluster and Redis Sentinel topologies, started on loopback ports by these tests.

A 3-master cluster and a master + replica + Sentinel run as private `redis-server` processes;
the tests go through `RedisManager` configured by URL, as a service would. Every data node
requires one password (per run), the Sentinel another.
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core.config import Settings
from core.embedded import EmbeddedRedis, find_redis_server
from core.redis_client import RedisManager
from core.runtime import Core

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

_SLOTS = 16384
_WAIT = 30.0
_PASSWORD = f"data-{secrets.token_urlsafe(18)}"
_SENTINEL_PASSWORD = f"sentinel-{secrets.token_urlsafe(18)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, check: Any, timeout: float = _WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _cluster_state(client: redis.Redis) -> str:
    info = client.execute_command("CLUSTER INFO")
    if isinstance(info, dict):
        return str(info.get("cluster_state"))
    text = info.decode() if isinstance(info, bytes) else str(info)
    return text.partition("cluster_state:")[2].split()[0]


def _replica_ready(replicas: list[dict[str, Any]]) -> bool:
    return (
        len(replicas) == 1
        and replicas[0].get("flags") == "slave"
        and (replicas[0].get("master-link-status") == "ok")
    )


class _Sentinel:
    """`redis-server --sentinel` with a generated config (Sentinel rewrites its config file)."""

    def __init__(self, directory: Path, master_port: int) -> None:
        self.port = _free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"requirepass {_SENTINEL_PASSWORD}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            f"sentinel auth-pass mymaster {_PASSWORD}\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
        )
        self.log = open(directory / "sentinel.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(find_redis_server()), str(self.config), "--sentinel"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for("sentinel", lambda: self.client().ping())

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=_SENTINEL_PASSWORD, socket_timeout=2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedRedis]]:
    """Three masters sharing the 16384 slots, no replicas."""
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[EmbeddedRedis] = []
    bus_ports = [_free_port() for _ in range(3)]
    try:
        for i in range(3):
            node = EmbeddedRedis(
                base / f"node{i}",
                port=_free_port(),
                # One password for the whole cluster: a client gives the same to every node.
                password=_PASSWORD,
                extra_args=[
                    *("--cluster-enabled", "yes"),
                    # Relative to the node's directory, where the server works: the account it
                    # runs as may not reach that directory by its path under pytest's tree.
                    *("--cluster-config-file", "nodes.conf"),
                    # The bus port defaults to port + 10000, which may be taken: pick one.
                    *("--cluster-port", str(bus_ports[i])),
                    *("--cluster-node-timeout", "2000"),
                ],
            )
            nodes.append(node)
            node.start()
        clients = [redis.Redis(port=n.port, password=n.password, socket_timeout=5) for n in nodes]
        share = _SLOTS // 3
        for i, client in enumerate(clients):
            end = _SLOTS if i == 2 else (i + 1) * share
            client.execute_command("CLUSTER ADDSLOTS", *range(i * share, end))
        for node, bus_port in zip(nodes[1:], bus_ports[1:], strict=True):
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus_port)
        for client in clients:
            _wait_for(
                "the cluster to be ok",
                lambda c=client: _cluster_state(c) == "ok",
            )
            _wait_for(
                "every node to know all three masters",
                lambda c=client: len(c.execute_command("CLUSTER SLOTS")) == 3,
            )
        for client in clients:
            client.close()
        yield nodes
    finally:
        for node in nodes:
            # Stops it and removes its files, also those placed outside pytest's tree.
            node.delete()


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A password-protected master and replica watched by one Sentinel (quorum 1)."""
    base = tmp_path_factory.mktemp("sentinel")
    # No diskless-sync delay: the replica's first sync would otherwise wait 5 s.
    no_delay = ["--repl-diskless-sync-delay", "0"]
    master = EmbeddedRedis(
        base / "master", port=_free_port(), password=_PASSWORD, extra_args=no_delay
    )
    replica: EmbeddedRedis | None = None
    sentinel: _Sentinel | None = None
    try:
        master.start()
        replica = EmbeddedRedis(
            base / "replica", port=_free_port(), password=_PASSWORD, extra_args=no_delay
        )
        replica.start()
        # masterauth at run time, not on the command line, which every local user can read:
        # the replica's now, the master's for when a failover makes it a replica.
        for server in (replica, master):
            with redis.Redis(port=server.port, password=_PASSWORD) as client:
                client.config_set("masterauth", _PASSWORD)
        with redis.Redis(port=replica.port, password=_PASSWORD) as client:
            client.replicaof("127.0.0.1", master.port)
        with redis.Redis(port=master.port, password=_PASSWORD) as client:
            _wait_for(
                "the replica to sync",
                lambda: client.info("replication").get("slave0", {}).get("state") == "online",
            )
        sentinel = _Sentinel(base / "sentinel", master.port)
        with sentinel.client() as client:
            # Sentinel only promotes a replica it has heard from (INFO) and that is in sync.
            _wait_for(
                "the sentinel to know the replica is in sync",
                lambda: _replica_ready(client.sentinel_slaves("mymaster")),
            )
        yield {"master": master, "replica": replica, "sentinel": sentinel}
    finally:
        if sentinel is not None:
            sentinel.stop()
        if replica is not None:
            replica.delete()
        master.delete()


# --- cluster ---------------------------------------------------------------------------------


def _cluster_settings(
    nodes: list[EmbeddedRedis], *, cache: dict[str, Any] | None = None, **redis: Any
) -> Settings:
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes[:2])
    url = f"redis+cluster://:{quote(_PASSWORD, safe='')}@{hosts}"
    return Settings(
        redis={"url": url, "key_prefix": f"sc{uuid.uuid4().hex[:8]}:", **redis},
        cache=cache or {},
    )


async def test_scaling_cluster_client_spreads_keys_over_all_masters(
    cluster: list[EmbeddedRedis],
) -> None:
    async with RedisManager(_cluster_settings(cluster)) as manager:
        client = manager.client
        assert isinstance(client, RedisCluster)
        prefix = manager.settings.redis.key_prefix
        for i in range(60):
            await client.set(f"{prefix}k{i}", i)
        for i in range(60):
            assert int(await client.get(f"{prefix}k{i}")) == i
        # The keys really live on different masters.
        counts = []
        for node in cluster:
            direct = aioredis.Redis(port=node.port, password=node.password)
            counts.append(await direct.dbsize())
            await direct.aclose()
        assert all(c > 0 for c in counts), counts
        assert await manager.ping() >= 0
        assert (await manager.server_version()).startswith(("6.", "7.", "8."))


async def test_scaling_cluster_cache_fills_once_and_invalidates(
    cluster: list[EmbeddedRedis],
) -> None:
    # A generous bound on each cache call: a manager's first calls open its connections to the
    # cluster (slot map, AUTH), which on a busy machine can outlast the default bound, and a
    # manager whose call timed out rightly loads without the lock.
    settings = _cluster_settings(cluster, cache={"operation_timeout": 10.0})
    async with RedisManager(settings) as first, RedisManager(settings) as second:
        calls = 0

        async def load() -> dict[str, int]:
            nonlocal calls
            calls += 1
            await anyio.sleep(0.2)
            return {"n": calls}

        # Two managers stand for two processes: the fill lock in Redis lets one of them load.
        results: list[Any] = []

        async def fill(manager: RedisManager, key: Any) -> None:
            results.append(await manager.cache.get_or_set(key, load, ttl=30))

        async with anyio.create_task_group() as tg:
            for manager in (first, second, first, second):
                tg.start_soon(fill, manager, ("user", 1))
        assert calls == 1 and results == [{"n": 1}] * 4
        assert await second.cache.get(("user", 1)) == {"n": 1}
        assert await first.cache.delete(("user", 1))
        assert await second.cache.get(("user", 1)) is None

        # Grouped entries share their group's slot; invalidating the group reaches all of them.
        for i in range(20):
            await first.cache.get_or_set(("item", i), load, ttl=30, group="items")
        loaded = calls
        for i in range(20):
            await second.cache.get_or_set(("item", i), load, ttl=30, group="items")
        assert calls == loaded
        await second.cache.invalidate_group("items")
        assert await first.cache.get(("item", 3), group="items") is None
        assert first.cache.stats.errors == 0 and second.cache.stats.errors == 0


# --- sentinel --------------------------------------------------------------------------------


def _sentinel_url(setup: dict[str, Any], *, sentinel_password: str = _SENTINEL_PASSWORD) -> str:
    port = setup["sentinel"].port
    # An unreachable sentinel first: the client must move on to the next one.
    return (
        f"redis+sentinel://:{_PASSWORD}@127.0.0.1:{_free_port()},127.0.0.1:{port}/mymaster/0"
        f"?sentinel_password={sentinel_password}"
    )


async def test_scaling_sentinel_settings_keep_passwords_out_of_sight(
    sentinel_setup: dict[str, Any], database_url: str
) -> None:
    settings = Settings(
        app={"startup_timeout": 5},
        database={"url": database_url},
        redis={"url": _sentinel_url(sentinel_setup)},
    )
    assert settings.redis.url.startswith("redis+sentinel://127.0.0.1:")
    manager = RedisManager(settings)

    lifespan = Core(settings, redis=manager)
    async with lifespan:
        report = (await lifespan.health.run()).to_dict()
        assert report["checks"]["redis"]["status"] == "ok"
        assert await manager.client.set("scaling:sentinel:probe", "1")
        shown = " ".join([repr(settings), repr(manager), manager.safe_url, str(report)])
        assert _PASSWORD not in shown and _SENTINEL_PASSWORD not in shown


async def test_scaling_sentinel_wrong_password_fails_start_without_leaking_it(
    sentinel_setup: dict[str, Any], database_url: str
) -> None:
    from core.runtime import DependencyUnavailable

    wrong = "not-the-sentinel-pw-5521"
    settings = Settings(
        # A refused sentinel login reads as "no master found", which start-up waits out.
        app={"startup_timeout": 1},
        database={"url": database_url},
        redis={"url": _sentinel_url(sentinel_setup, sentinel_password=wrong)},
    )
    lifespan = Core(settings)
    with anyio.fail_after(20):
        with pytest.raises(DependencyUnavailable) as caught:
            await lifespan.__aenter__()
    assert caught.value.dependency == "Redis"
    assert wrong not in str(caught.value) and _PASSWORD not in str(caught.value)


async def test_scaling_sentinel_client_follows_a_failover(sentinel_setup: dict[str, Any]) -> None:
    settings = Settings(redis={"url": _sentinel_url(sentinel_setup), "max_connections": 2})
    old_master = sentinel_setup["master"].port
    async with RedisManager(settings) as manager:
        client = manager.client
        key = f"scaling:sentinel:{uuid.uuid4().hex[:8]}"
        # More concurrent commands than connections wait for one, as with a single server.
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(client.incr, f"{key}:n")
        assert await client.get(f"{key}:n") == b"40"
        await client.set(key, "before")
        assert (await client.execute_command("ROLE"))[0] in (b"master", "master")
        # The write must reach the replica before it is promoted (replication is asynchronous).
        assert await client.execute_command("WAIT", 1, 5000) == 1
        assert await client.connection_pool.get_master_address() == ("127.0.0.1", old_master)

        with sentinel_setup["sentinel"].client() as sentinel:
            assert sentinel.sentinel_failover("mymaster")
        started = time.monotonic()
        written = 0
        with anyio.fail_after(_WAIT):
            while True:
                try:
                    await client.set(f"{key}:after", written)
                    address = await client.connection_pool.get_master_address()
                except redis.RedisError:
                    await anyio.sleep(0.1)
                    continue
                written += 1
                if address[1] != old_master:
                    break
                await anyio.sleep(0.05)
        took = time.monotonic() - started
        # Commands go to the promoted replica now, and it has the data written before.
        assert (await client.execute_command("ROLE"))[0] in (b"master", "master")
        assert await client.get(key) == b"before"
        assert await client.set(f"{key}:after", "done")
        print(f"sentinel failover followed in {took:.1f}s")
