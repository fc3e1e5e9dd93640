"""Load, measurement and figures for the fault scenarios.

A scenario builds a `Service` (an example app around a fresh core on the private servers), runs a
`Load` of concurrent requests through it, injects a fault, and turns the samples into one
`Figures` row. Requests go through `httpx.ASGITransport`, so cancelling a request's task is a
client disconnect as the app sees it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import asyncpg
import httpx
import redis.asyncio as aioredis

from core.config import Settings
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core.resilience import BreakerState, CircuitBreaker
from core.runtime import Core
from tests.support.scenario_apps import build_app

__all__ = [
    "SLACK",
    "Evidence",
    "FaultEnv",
    "Figures",
    "Load",
    "PgMonitor",
    "RedisMonitor",
    "Sample",
    "Service",
    "fault_settings",
    "openings",
    "p99",
    "refused_some",
    "summarise",
    "table",
    "timed",
    "wait_for",
]

# Slack added to a configured timeout before a latency counts as "hung": the machine has two
# cores shared with other work, and every request of a run shares one event loop.
SLACK = 1.0


def _merge(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    return {**base, **(extra or {})}


def fault_settings(
    pg_url: str,
    redis_url: str,
    *,
    schema: str,
    database: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    resilience: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
) -> Settings:
    """Settings for one scenario: short timeouts, a quick breaker, a unique application name."""
    return Settings(
        app=_merge(
            {
                "name": f"dcfault-{uuid.uuid4().hex[:8]}",
                "environment": "development",
                "startup_timeout": 10,
                "shutdown_timeout": 5,
            },
            app,
        ),
        database=_merge(
            {
                "url": pg_url,
                "search_path": schema,
                "pool_size": 5,
                "max_overflow": 0,
                "pool_timeout": 1.0,
                "connect_timeout": 1.0,
                "statement_timeout": 5,
                "command_timeout": 2.0,
            },
            database,
        ),
        redis=_merge(
            {
                "url": redis_url,
                "key_prefix": f"fault:{uuid.uuid4().hex[:8]}:",
                "socket_timeout": 0.5,
                "socket_connect_timeout": 0.5,
                "pool_timeout": 0.5,
            },
            redis,
        ),
        resilience=_merge({"breaker_reset_timeout": 0.5}, resilience),
        cache=_merge({"operation_timeout": 0.25}, cache),
        # Thousands of requests: access logging would only cost time here.
        observability={"access_log": False},
    )


# --- PostgreSQL, seen from outside the application ----------------------------------------------


class PgMonitor:
    """A direct connection to the private PostgreSQL (never through a proxy), reconnecting after
    restarts, to watch and break the application's server connections."""

    def __init__(self, url: str) -> None:
        self.dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._conn: asyncpg.Connection | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            if self._conn is not None:
                self._conn.terminate()
            self._conn = await asyncpg.connect(
                self.dsn, timeout=2, server_settings={"application_name": "dcfault-monitor"}
            )
        return self._conn

    async def fetchval(self, query: str, *args: Any) -> Any:
        """One value; retried once on a fresh connection (the server may have restarted)."""
        for attempt in (1, 2):
            try:
                with anyio.fail_after(3):
                    conn = await self._connection()
                    return await conn.fetchval(query, *args)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def execute(self, query: str) -> None:
        """Run a statement without results."""
        with anyio.fail_after(5):
            conn = await self._connection()
            await conn.execute(query)

    async def connections(self, app_name: str, state: str | None = None) -> int:
        """Server connections opened by `app_name` (optionally only those in `state`, a LIKE
        pattern such as 'idle in transaction%')."""
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        if state is None:
            return int(await self.fetchval(query, app_name))
        return int(await self.fetchval(query + " AND state LIKE $2", app_name, state))

    async def terminate(self, app_name: str, state: str = "idle") -> int:
        """`pg_terminate_backend` every connection of `app_name` in `state`; how many."""
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND state = $2"
        )
        return int(await self.fetchval(query, app_name, state))

    async def wait_connections(self, app_name: str, target: int = 0, timeout: float = 3.0) -> int:
        """Poll until `app_name` has at most `target` server connections (a closed client's
        backend exits a moment after the client leaves); the last count seen."""
        deadline = time.monotonic() + timeout
        while True:
            count = await self.connections(app_name)
            if count <= target or time.monotonic() > deadline:
                return count
            await anyio.sleep(0.05)

    async def close(self) -> None:
        """Close the monitoring connection."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                with anyio.fail_after(2):
                    await conn.close()
            except Exception:
                conn.terminate()


class RedisMonitor:
    """Looks at the private Redis from outside the application (never through a proxy): the
    connections a client name holds, by `CLIENT LIST`. A fresh connection per look, so restarts
    and `CLIENT KILL` do not disturb it."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def client_ids(self, name: str) -> set[int]:
        """The ids of the connections open under client name `name`."""
        client = aioredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            with anyio.fail_after(5):
                listed = await client.client_list()
        finally:
            await client.aclose()
        return {int(c["id"]) for c in listed if c.get("name") == name}

    async def wait_clients(self, name: str, target: int = 0, timeout: float = 3.0) -> int:
        """Poll until `name` holds at most `target` connections; the last count seen."""
        deadline = time.monotonic() + timeout
        while True:
            count = len(await self.client_ids(name))
            if count <= target or time.monotonic() > deadline:
                return count
            await anyio.sleep(0.05)


def openings(breaker: CircuitBreaker) -> list[float]:
    """A list that receives the time of every transition of `breaker` to open."""
    opened: list[float] = []

    def listen(_name: str, _old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            opened.append(time.monotonic())

    breaker.listeners.append(listen)
    return opened


# --- the service under test ------------------------------------------------------------------


async def _create_tables(core: Core) -> None:
    from examples.users.models import User

    await core.db.create_all(User.metadata)


class Service:
    """An example app around a fresh core, in a schema of its own on the private PostgreSQL.

    Leaving the block records what was left behind: connections still checked out of the pools,
    then (after the core closed) PostgreSQL and Redis connections still open under the
    application name (which the core sets as both servers' client name).
    """

    def __init__(self, framework: str, settings: Settings, env: FaultEnv) -> None:
        self.framework = framework
        self.settings = settings
        self.monitor = env.monitor
        self.redis_monitor = env.redis_monitor
        self.schema = env.schema
        self.core = Core(
            settings,
            on_startup=[_create_tables],
        )
        self.app: Any = None
        self.client: httpx.AsyncClient | None = None
        self.checked_out_at_exit = 0
        self.server_left = 0
        self.redis_left = 0
        self._entered = False

    @property
    def name(self) -> str:
        """The application name the service's connections carry."""
        return self.settings.app.name

    def checked_out(self) -> int:
        """Connections currently checked out of both pools."""
        db = self.core.db
        pools: list[Any] = [db.engine.pool, db.read_engine.pool]
        return sum(int(pool.checkedout()) for pool in pools)

    def pool_bound(self) -> int:
        """The most server connections both pools together may open."""
        cfg = self.settings.database
        return 2 * (cfg.pool_size + cfg.max_overflow)

    @property
    def leaked(self) -> int:
        """Connections left checked out at exit plus PostgreSQL and Redis connections left
        open after close."""
        return self.checked_out_at_exit + self.server_left + self.redis_left

    @property
    def leak_detail(self) -> str:
        """What `leaked` consists of."""
        return (
            f"{self.checked_out_at_exit} checked out, {self.server_left} PostgreSQL, "
            f"{self.redis_left} Redis"
        )

    async def __aenter__(self) -> Service:
        await self.monitor.execute(f'CREATE SCHEMA "{self.schema}"')
        await self.core.__aenter__()
        self._entered = True
        self.app = build_app(self.framework, self.core)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://test", timeout=30
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.client is not None:
                await self.client.aclose()
            if self._entered:
                self.checked_out_at_exit = self.checked_out()
                await self.core.__aexit__(None, None, None)
            self.server_left = await self.monitor.wait_connections(self.name)
            self.redis_left = await self.redis_monitor.wait_clients(self.name)
        finally:
            await self.monitor.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    async def close_core(self) -> None:
        """Run the core's shutdown now, with requests possibly still in flight (leaving the
        block then only checks what was left behind)."""
        if self._entered:
            self._entered = False
            await self.core.__aexit__(None, None, None)

    @property
    def http(self) -> httpx.AsyncClient:
        """The in-process client."""
        assert self.client is not None, "enter the service first"
        return self.client

    async def seed_users(self, count: int) -> list[str]:
        """Create `count` users through the API; their ids."""
        ids = []
        for i in range(count):
            r = await self.http.post(
                "/users", json={"email": f"seed{i}-{uuid.uuid4().hex[:6]}@x.io", "name": f"S{i}"}
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        return ids

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are stored (read straight from the server)."""
        rows = await self.monitor.fetchval(
            f'SELECT array_agg(id::text) FROM "{self.schema}".users WHERE id::text = ANY($1)',
            list(ids),
        )
        return set(rows or ())


# --- load --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request: when it ran and how it ended (`status` None: it raised `error`)."""

    started: float
    ended: float
    status: int | None
    retry_after: bool = False
    error: str | None = None
    body: Any = None

    @property
    def latency(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


Request = Callable[[int], Awaitable[httpx.Response]]


async def timed(send: Callable[[], Awaitable[httpx.Response]]) -> Sample:
    """Run one request and describe it; errors raised by the app become a sample too."""
    started = time.monotonic()
    try:
        response = await send()
    except Exception as exc:
        return Sample(started, time.monotonic(), None, error=f"{type(exc).__name__}: {exc}")
    ended = time.monotonic()
    body: Any = None
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
    return Sample(
        started, ended, response.status_code, "retry-after" in response.headers, None, body
    )


class Load:
    """`concurrency` workers sending `request(n)` back to back (with `pause` between) until
    `stop()`; every outcome is kept in `samples`."""

    def __init__(self, request: Request, concurrency: int, *, pause: float = 0.005) -> None:
        self.request = request
        self.concurrency = concurrency
        self.pause = pause
        self.samples: list[Sample] = []
        self._running = True
        self._counter = 0
        self._workers: list[asyncio.Task[None]] = []

    async def _worker(self) -> None:
        while self._running:
            n = self._counter
            self._counter += 1
            self.samples.append(await timed(functools.partial(self.request, n)))
            await asyncio.sleep(self.pause)

    def start(self) -> Load:
        """Start the workers."""
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        return self

    def halt(self) -> None:
        """Start no new requests; those in flight carry on."""
        self._running = False

    async def stop(self, timeout: float = 15.0) -> list[Sample]:
        """Let each worker finish its current request (bounded), then return the samples."""
        self._running = False
        with anyio.fail_after(timeout):
            await asyncio.gather(*self._workers)
        return self.samples

    async def __aenter__(self) -> Load:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._running:
            self._running = False
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)

    def since(self, moment: float) -> list[Sample]:
        """Samples of requests that started at or after `moment`."""
        return [s for s in self.samples if s.started >= moment]


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], timeout: float) -> float:
    """Poll `predicate` until true; the seconds it took. Fails the test after `timeout`."""
    started = time.monotonic()
    with anyio.fail_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return time.monotonic() - started
            await anyio.sleep(0.02)


# --- figures -----------------------------------------------------------------------------------


def p99(values: Sequence[float]) -> float:
    """The 99th percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


Evidence = Mapping[str, "bool | Callable[[Figures], bool]"]
"""What a scenario's fault must have caused, by description: seen or not, or a test of the row
(such as `refused_some`)."""


@dataclass
class Figures:
    """One row of the fault table."""

    scenario: str
    sent: int
    succeeded: int
    expected_failures: int
    unexpected_failures: int
    p99: float
    max_latency: float
    bound: float
    recovery: float | None
    leaked: int
    evidence: dict[str, bool]
    """What the fault must have caused, and whether it was seen: a scenario whose fault had no
    effect proves nothing, so every entry must hold."""
    note: str = ""
    leak_detail: str = ""
    unexpected_examples: list[str] = field(default_factory=list)
    slowest: list[str] = field(default_factory=list)
    max_bounded: bool = False
    """Hold every request, not only the 99th percentile, to `bound` (no request may hang)."""

    def check(self) -> None:
        """Assert the targets: the fault took effect, nothing failed unexpectedly, p99 within
        its bound, no leak."""
        assert self.evidence, f"{self.scenario}: no evidence required of the fault"
        unseen = [what for what, seen in self.evidence.items() if not seen]
        assert not unseen, f"{self.scenario}: the fault had no effect; not seen: {unseen}"
        assert self.unexpected_failures == 0, (self.scenario, self.unexpected_examples)
        assert self.p99 <= self.bound, (
            f"{self.scenario}: p99 {self.p99:.3f}s > {self.bound}s; slowest: {self.slowest}"
        )
        if self.max_bounded:
            assert self.max_latency <= self.bound, (
                f"{self.scenario}: a request took {self.max_latency:.3f}s > {self.bound}s; "
                f"slowest: {self.slowest}"
            )
        assert self.leaked == 0, (
            f"{self.scenario}: {self.leaked} connection(s) leaked ({self.leak_detail})"
        )
        assert "NEVER RECOVERED" not in self.note, f"{self.scenario}: did not recover"


def _describe(sample: Sample) -> str:
    return f"{sample.status} {sample.error or sample.body}"[:200]


def _slowest(samples: Sequence[Sample], origin: float | None, count: int = 5) -> list[str]:
    """The slowest requests as "start offset/latency/status", for failure messages."""
    zero = origin if origin is not None else min((s.started for s in samples), default=0.0)
    ranked = sorted(samples, key=lambda s: s.latency, reverse=True)[:count]
    return [f"+{s.started - zero:.2f}s/{s.latency:.3f}s/{s.status or s.error}" for s in ranked]


def refused_some(row: Figures) -> bool:
    """Evidence for faults that must make some requests fail: expected failures were seen."""
    return row.expected_failures > 0


def summarise(
    scenario: str,
    samples: Sequence[Sample],
    *,
    bound: float,
    leaked: int,
    evidence: Evidence,
    leak_detail: str = "",
    fault_started: float | None = None,
    fault_lifted: float | None = None,
    expected_status: Sequence[int] = (503,),
    extra_expected: int = 0,
    expected_errors: Sequence[str] = (),
    background: Sequence[Sample] = (),
    max_bounded: bool = False,
    note: str = "",
) -> Figures:
    """Classify the samples into one row.

    A failure is expected when it is an `expected_status` answer with Retry-After that ended
    after the fault began (`fault_started` None: the whole run is the fault). Recovery is the time
    from `fault_lifted` until the last failure ended (0 when none came after it); a run that
    still fails at its very end never recovered, which fails the row's check. `background`
    requests (those that create the fault, such as the ones holding the pool) count as sent and
    must succeed, but their latency is theirs by design and stays out of the p99.
    `expected_errors` names client errors (such as `ConnectError` once a server has stopped
    listening) that count as expected failures after the fault began. `evidence` says what the
    fault must have caused (see `Figures.evidence`); callables are applied to the row.
    """
    timed_samples = samples
    samples = [*samples, *background]
    ok = expected = 0
    unexpected: list[Sample] = []
    for s in samples:
        if s.ok:
            ok += 1
        elif (fault_started is None or s.ended >= fault_started) and (
            (s.status in expected_status and s.retry_after)
            or (s.error is not None and s.error.split(":")[0] in expected_errors)
        ):
            expected += 1
        else:
            unexpected.append(s)
    recovery: float | None = None
    if fault_lifted is not None:
        failures_after = [s.ended for s in samples if not s.ok and s.ended >= fault_lifted]
        recovery = max(failures_after) - fault_lifted if failures_after else 0.0
        if failures_after and not any(s.ok and s.started >= max(failures_after) for s in samples):
            recovery = None  # still failing when the run ended
            note = (note + "; NEVER RECOVERED").lstrip("; ")
    row = Figures(
        scenario=scenario,
        sent=len(samples) + extra_expected,
        succeeded=ok,
        expected_failures=expected + extra_expected,
        unexpected_failures=len(unexpected),
        p99=p99([s.latency for s in timed_samples]),
        max_latency=max((s.latency for s in timed_samples), default=0.0),
        bound=bound,
        recovery=recovery,
        leaked=leaked,
        evidence={},
        note=note,
        leak_detail=leak_detail,
        unexpected_examples=[_describe(s) for s in unexpected[:5]],
        max_bounded=max_bounded,
        slowest=_slowest(timed_samples, fault_started),
    )
    row.evidence = {
        what: seen(row) if callable(seen) else bool(seen) for what, seen in evidence.items()
    }
    return row


COLUMNS = (
    ("scenario", "<"),
    ("sent", ">"),
    ("ok", ">"),
    ("failed: expected", ">"),
    ("failed: unexpected", ">"),
    ("p99 s", ">"),
    ("max s", ">"),
    ("bound s", ">"),
    ("recover s", ">"),
    ("leaked", ">"),
    ("fault seen", "<"),
    ("note", "<"),
)


def _seen(evidence: Mapping[str, bool]) -> str:
    unseen = [what for what, seen in evidence.items() if not seen]
    if not evidence:
        return "NOT REQUIRED"
    return f"NOT SEEN: {'; '.join(unseen)}" if unseen else f"{len(evidence)}/{len(evidence)}"


def table(rows: Sequence[Figures]) -> list[str]:
    """The rows as an aligned text table."""
    cells = [
        [
            r.scenario,
            str(r.sent),
            str(r.succeeded),
            str(r.expected_failures),
            str(r.unexpected_failures),
            f"{r.p99:.3f}",
            f"{r.max_latency:.3f}",
            f"{r.bound:.2f}",
            "-" if r.recovery is None else f"{r.recovery:.2f}",
            str(r.leaked),
            _seen(r.evidence),
            r.note,
        ]
        for r in rows
    ]
    headers = [name for name, _ in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return " | ".join(
            f"{v:{align}{w}}" for v, (_, align), w in zip(values, COLUMNS, widths, strict=True)
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return [line(headers), rule, *(line(c) for c in cells)]


@dataclass(frozen=True)
class FaultEnv:
    """What every scenario gets: the private servers, a monitor on each, a schema of its own,
    and `record` to add its row to the figures table."""

    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    monitor: PgMonitor
    redis_monitor: RedisMonitor
    schema: str
    record: Callable[[Figures], None]
