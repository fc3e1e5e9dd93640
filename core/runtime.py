"""`Core`, the composition root: the object that owns a service's database, Redis, health,
metrics and ASGI layers, and starts and stops them around the application's life.

`Core(settings)` builds its own managers; `Core(settings, db=..., redis=...)` uses managers you
built. `lifespan` (also `from core import lifespan`) is the default instance over the global
`db_manager` and `redis_manager`; like every `Core` it works as `FastAPI(lifespan=lifespan)` and
as `Litestar(lifespan=[lifespan])`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import anyio

from core._aio import finish_shielded
from core.config import Settings, get_settings
from core.database import DatabaseManager
from core.diagnosis import Diagnosis, diagnose
from core.health import HealthRegistry
from core.observability import Metrics, ObservabilityMiddleware, observe_engine
from core.observability.asgi_types import ASGIApp
from core.redis_client import RedisManager
from core.resilience import CircuitBreaker, RetryPolicy
from core.unit_of_work import UnitOfWorkMiddleware, warn_unwired
from core.urls import redact_url

__all__ = [
    "Core",
    "DependencyUnavailable",
    "Resource",
    "combine_lifespans",
    "lifespan",
    "wait_until_ready",
]

log = logging.getLogger("dualcore.lifespan")


class Resource(Protocol):
    """What the lifespan manages: something that starts, answers a ping and closes."""

    @property
    def safe_url(self) -> str: ...

    async def start(self) -> None: ...

    async def ping(self) -> float: ...

    async def close(self) -> None: ...


class DependencyUnavailable(RuntimeError):
    """A dependency did not become usable within the start-up bound.

    `diagnosis` (when known) holds the cause class, the server's message and a hint; the
    message ends with all three.
    """

    def __init__(
        self,
        dependency: str,
        url: str,
        waited: float,
        attempts: int,
        cause: str | Diagnosis,
    ):
        self.dependency = dependency
        self.diagnosis = cause if isinstance(cause, Diagnosis) else None
        # Redacted again: a resource of the application's own may not hide its password.
        self.url = url = redact_url(url)
        super().__init__(
            f"{dependency} at {url} is not reachable after {waited:.1f}s "
            f"({attempts} attempt{'s' if attempts != 1 else ''}): {cause}"
        )


async def wait_until_ready(
    name: str,
    resource: Resource,
    *,
    timeout: float,
    secrets: Sequence[str] = (),
    base_delay: float = 0.1,
    max_delay: float = 2.0,
) -> None:
    """Ping `resource` until it answers, retrying transient failures with jittered exponential
    backoff for at most `timeout` seconds in total; then raise `DependencyUnavailable`."""
    started = time.monotonic()
    deadline = started + timeout
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        # Each ping is cut off at the overall deadline, so a hung server cannot stretch it.
        with anyio.fail_after(max(deadline - time.monotonic(), 0.001)):
            await resource.ping()

    def on_retry(attempt_no: int, exc: BaseException, delay: float) -> None:
        log.info("%s not ready (%s); retrying in %.2fs", name, type(exc).__name__, delay)

    policy = RetryPolicy(
        attempts=10_000,
        max_time=timeout,
        base_delay=base_delay,
        max_delay=max_delay,
        # The policy's default, `is_transient`: a server still starting refuses or times out
        # (retried); a wrong password will not heal (not retried).
    )
    try:
        await policy.call(attempt, on_retry=on_retry)
    except Exception as exc:
        waited = time.monotonic() - started
        cause = diagnose(exc, name, secrets)
        raise DependencyUnavailable(name, resource.safe_url, waited, attempts, cause) from None


class Core:
    """A service's database, Redis, health checks, metrics and ASGI layers, started together and
    closed in reverse order.

    An instance is callable with the application (`core(app)`) and is itself an async context
    manager, so it is a lifespan for FastAPI, Litestar and plain `async with`. Entering it again
    while it runs (an adapter's wiring and the app's own lifespan both naming it) shares the one
    start: only the outermost exit closes.

    With `OBSERVABILITY__TRACING` on, start-up also traces the engines' SQL, the Redis client's
    commands and the cache's events, into the spans of `tracer_provider` (default: the global
    one); shutdown removes that instrumentation again.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        db: DatabaseManager | None = None,
        redis: RedisManager | None = None,
        extra: Sequence[tuple[str, Resource]] = (),
        on_startup: Sequence[Callable[[Core], Awaitable[None]]] = (),
        tracer_provider: Any = None,
    ) -> None:
        if settings is not None:
            db = db if db is not None else DatabaseManager(settings)
            redis = redis if redis is not None else RedisManager(settings)
        self._db = db
        self._redis = redis
        self._settings = settings
        self._extra = list(extra)
        self._on_startup = list(on_startup)
        self._started: list[tuple[str, Resource]] = []
        self._health: HealthRegistry | None = None
        self._metrics: Metrics | None = None
        self._unobserve: list[Callable[[], None]] = []
        self._entered = 0
        self._starting: anyio.Event | None = None
        # None: OpenTelemetry's global provider, as configured by the service.
        self._tracer_provider = tracer_provider

    @property
    def settings(self) -> Settings:
        """The settings used for start-up and shutdown bounds."""
        # Not stored: the global instances follow `get_settings.cache_clear()` between runs.
        return self._settings if self._settings is not None else get_settings()

    @property
    def db(self) -> DatabaseManager:
        """The database manager (the global `db_manager` unless one was given)."""
        if self._db is None:
            from core.database import db_manager

            self._db = db_manager
        return self._db

    @property
    def redis(self) -> RedisManager:
        """The Redis manager (the global `redis_manager` unless one was given)."""
        if self._redis is None:
            from core.redis_client import redis_manager

            self._redis = redis_manager
        return self._redis

    @property
    def health(self) -> HealthRegistry:
        """Readiness checks: PostgreSQL and Redis, plus any added with `health.add(...)`."""
        if self._health is None:
            registry = HealthRegistry(cache_for=self.settings.observability.health_cache_ttl)
            registry.add("postgresql", self.db.ping)
            # Reads fall back to the primary, so a replica being down degrades, never fails.
            if isinstance(self.db, DatabaseManager):
                for name, probe in self.db.replica_checks():
                    registry.add(name, probe, required=False)
            registry.add("redis", self.redis.ping)
            for name, resource in self._extra:
                registry.add(name.lower(), resource.ping)
            self._health = registry
        return self._health

    @property
    def metrics(self) -> Metrics:
        """This service's Prometheus metrics (its own registry, served at `/metrics`)."""
        if self._metrics is None:
            self._metrics = Metrics()
        return self._metrics

    def wrap_asgi(
        self, app: ASGIApp, *, observability: bool = True, unit_of_work: bool = True
    ) -> ASGIApp:
        """`app` inside the core's ASGI layers: the request's unit of work (read-write sessions
        committed before the response starts) and around it the request id, access log and
        metrics middleware. Either can be left out (an adapter that adds the unit of work
        elsewhere, an app that wants no observability)."""
        wrapped = app
        if unit_of_work and not isinstance(app, UnitOfWorkMiddleware):
            wrapped = UnitOfWorkMiddleware(wrapped)
        if observability and not isinstance(app, ObservabilityMiddleware):
            wrapped = ObservabilityMiddleware(
                wrapped,
                settings=self.settings.observability,
                metrics=self.metrics,
                tracer_provider=self._tracer_provider,
            )
        return wrapped

    def resources(self) -> list[tuple[str, Resource]]:
        """The named resources in start order."""
        return [("PostgreSQL", self.db), ("Redis", self.redis), *self._extra]

    def __call__(self, app: object = None) -> AbstractAsyncContextManager[None]:
        state = getattr(app, "state", None)
        wired = getattr(state, "dualcore", None) if state is not None else None
        if state is not None and wired is None:
            # A framework app run by this lifespan but never wired (`install(app)` forgotten):
            # say so at start-up, before a request's commit can run after its response.
            warn_unwired()
        if wired is not None and wired is not self:
            # Requests would use the wired core's managers while this one's were started.
            raise RuntimeError(
                "the app runs a different Core from the one it was wired with: pass the same "
                "instance to the app's lifespan and to install()/CorePlugin (or only to the latter)"
            )
        return self._run()

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        await self.__aenter__()
        try:
            yield
        finally:
            await self.__aexit__(None, None, None)

    async def __aenter__(self) -> Core:
        while self._starting is not None:
            await self._starting.wait()
        if self._entered:
            self._entered += 1
            return self
        self._starting = starting = anyio.Event()
        try:
            await self._start()
            self._entered = 1
        finally:
            self._starting = None
            starting.set()
        return self

    async def _start(self) -> None:
        settings = self.settings
        secrets = secrets_of(settings)
        timeout = settings.app.startup_timeout
        try:
            # Dependencies start concurrently: start-up takes the slowest, not the sum.
            async with anyio.create_task_group() as tg:
                for name, resource in self.resources():
                    self._started.append((name, resource))
                    tg.start_soon(self._start_one, name, resource, timeout, secrets)
            self._observe()
            await self._serve_metrics()
            for hook in self._on_startup:
                await hook(self)
        except BaseException as exc:
            await finish_shielded(self._close_all())
            failure = _first_dependency_error(exc)
            if failure is not None:
                raise failure from None
            inner = getattr(exc, "exceptions", None)
            if inner is not None and len(inner) == 1:
                # The task group is an implementation detail: surface the one real error.
                raise inner[0] from None
            raise

    async def _start_one(
        self, name: str, resource: Resource, timeout: float, secrets: Sequence[str]
    ) -> None:
        await resource.start()
        await wait_until_ready(name, resource, timeout=timeout, secrets=secrets)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._entered > 1:
            self._entered -= 1
            return
        self._entered = 0
        await finish_shielded(self._close_all())

    def _observe(self) -> None:
        obs = self.settings.observability
        db, redis = self.db, self.redis
        breakers: list[CircuitBreaker] = []
        # A core may manage stand-ins for either manager; only the real ones have engines.
        if isinstance(db, DatabaseManager):
            for name, engine in db.engines():
                self._unobserve.append(observe_engine(engine, obs, self.metrics, name=name))
            breakers.append(db.breaker)
        if isinstance(redis, RedisManager):
            if redis.cache_metrics is None:
                redis.cache_metrics = self.metrics.cache("default")
            breakers.append(redis.breaker)
        if obs.metrics_enabled:
            self.metrics.watch_breaker(*breakers)
        if obs.tracing:
            from core.observability.tracing import trace_dependencies

            self._unobserve.append(
                trace_dependencies(
                    obs,
                    engines=[e for _, e in db.engines()] if isinstance(db, DatabaseManager) else [],
                    redis=redis if isinstance(redis, RedisManager) else None,
                    tracer_provider=self._tracer_provider,
                )
            )

    @property
    def metrics_on_app(self) -> bool:
        """Whether the adapters mount the metrics route on the app itself (metrics enabled and
        no `OBSERVABILITY__METRICS_PORT` of their own)."""
        obs = self.settings.observability
        return obs.metrics_enabled and obs.metrics_port is None

    async def _serve_metrics(self) -> None:
        obs = self.settings.observability
        if not obs.metrics_enabled or obs.metrics_port is None:
            return
        from core.observability.metrics_server import MetricsServer

        server = MetricsServer(
            self.metrics, host=obs.metrics_host, port=obs.metrics_port, path=obs.metrics_path
        )
        await server.start()
        self._started.append(("metrics server", server))
        log.info("metrics served at %s", server.safe_url)

    async def _close_all(self) -> None:
        while self._unobserve:
            self._unobserve.pop()()
        timeout = self.settings.app.shutdown_timeout
        while self._started:
            name, resource = self._started.pop()
            try:
                with anyio.fail_after(timeout):
                    await resource.close()
            except Exception:
                log.exception("closing %s failed; closing the others anyway", name)


def combine_lifespans(
    *lifespans: Callable[[Any], AbstractAsyncContextManager[Any]],
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """One lifespan that enters each given lifespan in order and exits them in reverse, e.g.
    `FastAPI(lifespan=combine_lifespans(lifespan, my_lifespan))`."""

    @asynccontextmanager
    async def combined(app: Any = None) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for item in lifespans:
                await stack.enter_async_context(item(app))
            yield

    return combined


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, to keep out of start-up errors."""
    db, redis = settings.database, settings.redis
    found = [db.password, redis.password, redis.sentinel_password, *db.replica_passwords]
    found += [*db.secret_options.values(), *redis.secret_options.values()]
    for options in db.replica_secret_options:
        found += options.values()
    return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]


def _first_dependency_error(exc: BaseException) -> DependencyUnavailable | None:
    if isinstance(exc, DependencyUnavailable):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _first_dependency_error(inner)
        if found is not None:
            return found
    return None


lifespan = Core()
"""The default lifespan over the global `db_manager` and `redis_manager`."""
