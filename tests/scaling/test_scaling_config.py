"""Settings and wiring for replicas, Sentinel and Cluster: parsing, secrets, replica choice.

No servers are needed here; the topologies themselves are exercised in the slow
test_scaling_postgres.py and test_scaling_redis.py.
"""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import DatabaseSettings, RedisSettings, Settings
from core.database.replicas import Replica, ReplicaSet
from core.redis_client import RedisManager
from core.redis_client.topology import is_topology_url, normalise_topology_url, parse_topology_url

# --- replica settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:pw1@r1:5433/app,postgres://r2/app",
        json.dumps(["postgresql://u:pw1@r1:5433/app", "postgres://r2/app"]),
    ],
    ids=["comma", "json"],
)
def test_replica_urls_from_env_split_passwords(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("DATABASE__REPLICA_URLS", raw)
    monkeypatch.setenv("DATABASE__PASSWORD", "primary-secret")
    db = Settings().database
    assert db.replica_urls == [
        "postgresql+asyncpg://u@r1:5433/app",
        "postgresql+asyncpg://r2/app",
    ]
    # A replica's own password wins; one without uses the primary's.
    assert db.replica_sqlalchemy_url(0).password == "pw1"
    assert db.replica_sqlalchemy_url(1).password == "primary-secret"
    shown = repr(db) + db.model_dump_json() + str(db.model_dump())
    assert "pw1" not in shown and "primary-secret" not in shown


def test_replica_passwords_given_separately_fill_in() -> None:
    db = DatabaseSettings.model_validate(
        {
            "replica_urls": ["postgresql://a/app", "postgresql://:own@b/app"],
            "replica_passwords": ["given", "ignored"],
        }
    )
    assert db.replica_sqlalchemy_url(0).password == "given"
    assert db.replica_sqlalchemy_url(1).password == "own"
    # Validating the dumped settings again keeps them (settings are copied that way).
    again = DatabaseSettings.model_validate(db.model_dump())
    assert again.replica_sqlalchemy_url(1).password == "own"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"replica_urls": ["embedded"]}, "cannot be 'embedded'"),
        ({"replica_urls": ["mysql://h/d"]}, "postgresql://"),
        ({"replica_urls": ["postgresql://a/d"], "replica_passwords": ["x", "y"]}, "one entry"),
        ({"replica_urls": '["postgresql://a/d"'}, "JSON list"),
        ({"replica_cooloff": 0}, "greater than 0"),
    ],
)
def test_replica_settings_are_validated(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DatabaseSettings.model_validate(data)


# --- Redis topology URLs ---------------------------------------------------------------------


def test_sentinel_url_is_normalised_and_secrets_moved_out() -> None:
    cfg = RedisSettings.model_validate(
        {"url": "redis+sentinel://app:data-pw@s1,[::1]:26380/mymaster/3?sentinel_password=s-pw"}
    )
    assert cfg.url == "redis+sentinel://app@s1:26379,[::1]:26380/mymaster/3"
    assert cfg.password is not None and cfg.password.get_secret_value() == "data-pw"
    assert cfg.sentinel_password is not None
    assert cfg.sentinel_password.get_secret_value() == "s-pw"
    assert "data-pw" not in repr(cfg) and "s-pw" not in repr(cfg)
    topology, _, _ = parse_topology_url(cfg.url)
    assert topology.kind == "sentinel" and topology.service == "mymaster" and topology.db == 3
    assert topology.nodes == (("s1", 26379), ("::1", 26380))
    assert topology.username == "app"


def test_cluster_url_defaults() -> None:
    cfg = RedisSettings.model_validate({"url": "REDIS+CLUSTER://:pw@n1,n2:7001/0"})
    assert cfg.url == "redis+cluster://n1:6379,n2:7001"
    assert is_topology_url(cfg.url) and not is_topology_url("redis://h:6379/0")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "service name"),
        ("redis+sentinel://h:26379/mymaster/x", "must be a number"),
        ("redis+sentinel://h:26379/my master", "service name"),
        ("redis+cluster://h:7000/2", "only database 0"),
        ("redis+cluster://h:70000", "invalid port"),
        ("redis+cluster://", "no host"),
        ("redis+cluster://h:7000,", "invalid host"),
        ("redis+cluster://::1:7000", "brackets"),
        ("redis+cluster://h:7000?socket_timeout=1", "not supported"),
        ("redis+cluster://h:7000?sentinel_password=x", "not supported"),
    ],
)
def test_bad_topology_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedisSettings.model_validate({"url": url})


_names = st.text(string.ascii_letters + string.digits + ".-_", min_size=1, max_size=20)
_hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_secrets = st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s)


@given(
    kind=st.sampled_from(["sentinel", "cluster"]),
    nodes=st.lists(st.tuples(_hosts, st.integers(1, 65535)), min_size=1, max_size=4),
    service=_names,
    db=st.integers(0, 15),
    user=st.one_of(st.none(), _names),
    password=st.one_of(st.none(), _secrets),
)
def test_topology_urls_round_trip_without_secrets(
    kind: str,
    nodes: list[tuple[str, int]],
    service: str,
    db: int,
    user: str | None,
    password: str | None,
) -> None:
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nodes)
    auth = ""
    if user is not None or password is not None:
        auth = quote(user or "", safe="")
        auth += f":{quote(password, safe='')}" if password is not None else ""
        auth += "@"
    path = f"/{service}/{db}" if kind == "sentinel" else ""
    url = f"redis+{kind}://{auth}{hosts}{path}"
    clean, got_password, _ = normalise_topology_url(url)
    assert got_password == password
    topology, again_password, _ = parse_topology_url(clean)
    assert again_password is None
    assert topology.nodes == tuple(nodes)
    assert topology.username == user
    if kind == "sentinel":
        assert (topology.service, topology.db) == (service, db)
    assert normalise_topology_url(clean)[0] == clean
    # The stored URL is the same whatever the password: it cannot contain it.
    bare_auth = f"{quote(user, safe='')}@" if user is not None else ""
    assert normalise_topology_url(f"redis+{kind}://{bare_auth}{hosts}{path}")[0] == clean


def _error(url: str) -> str | None:
    try:
        parse_topology_url(url)
    except ValueError as exc:
        return str(exc)
    return None


@given(st.text(max_size=60), _secrets, _secrets)
def test_topology_url_errors_do_not_depend_on_the_password(
    junk: str, password: str, other: str
) -> None:
    # Any error text is the same whatever the password: it cannot contain it.
    first = _error(f"redis+cluster://:{quote(password, safe='')}@{junk}")
    second = _error(f"redis+cluster://:{quote(other, safe='')}@{junk}")
    assert first == second


# --- replica choice --------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def replica_set() -> Any:
    engines = [create_async_engine(f"postgresql+asyncpg://r{i}/app") for i in range(3)]
    clock = _Clock()
    replicas = ReplicaSet(
        [Replica(f"replica-{i}", e, f"r{i}") for i, e in enumerate(engines)],
        cooloff=5,
        clock=clock,
    )
    yield replicas, clock
    await replicas.dispose()


@pytest.mark.anyio
async def test_round_robin_skips_a_replica_during_its_cooloff(replica_set: Any) -> None:
    replicas, clock = replica_set
    r0, r1, r2 = list(replicas)
    firsts = [replicas.candidates()[0] for _ in range(6)]
    assert firsts == [r0, r1, r2, r0, r1, r2]
    replicas.mark_down(r1)
    # The others take turns evenly while it sits out.
    assert [replicas.candidates() for _ in range(3)] == [[r0, r2], [r2, r0], [r0, r2]]
    clock.now += 4.9
    assert r1 not in replicas.candidates()
    clock.now += 0.2
    assert not replicas.candidates() or r1 in replicas.candidates()
    assert replicas.is_up(r1)
    for each in (r0, r1, r2):
        replicas.mark_down(each)
    assert replicas.candidates() == []
    replicas.mark_up(r2)
    assert replicas.candidates() == [r2]


# --- clients are built from the URL ------------------------------------------------------------


@pytest.mark.anyio
async def test_manager_builds_cluster_and_sentinel_clients_lazily() -> None:
    cluster = RedisManager(Settings(redis={"url": "redis+cluster://127.0.0.1:1"}))
    assert isinstance(cluster.client, RedisCluster)
    await cluster.close()
    sentinel = RedisManager(Settings(redis={"url": "redis+sentinel://:pw@127.0.0.1:1/mymaster/2"}))
    pool = sentinel.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 2
    assert "pw" not in repr(sentinel)
    await sentinel.close()
