"""The anchors a team would write instead of using dualcore: the same users service by hand.

Two of each: the seed's style, and the same work dualcore's read-only session does.

- `fastapi_hand()`: plain FastAPI + SQLAlchemy + redis-py, in the seed's style: an
  `async_sessionmaker` session per request on an engine with `pool_pre_ping=True`, committed
  after the handler (pre-ping, BEGIN, SELECT, COMMIT); the cached lookup is `redis.get` +
  `model_validate_json`, filled on a miss.
- `fastapi_hand_ro()`: the same app doing equal work: an engine with
  `isolation_level="AUTOCOMMIT"` and `default_transaction_read_only`, no pre-ping, no commit:
  one round trip per read, as dualcore's read-only session.
- `litestar_aa()`: Litestar + advanced-alchemy's SQLAlchemy plugin (its session dependency and
  its autocommit before-send handler: BEGIN, SELECT, COMMIT), the same cached lookup with
  redis-py.
- `litestar_aa_ro()`: the same plugin on an engine with `isolation_level="AUTOCOMMIT"` and
  `default_transaction_read_only`: the handler's commit sends nothing, one round trip per read.

All serve the example's `GET /users/{id}` and `GET /users/{id}/cached` with the example's
model and schema (`examples.users`), reading settings from the same environment variables
the dualcore apps read (`DATABASE_URL`, `REDIS_URL`, `DATABASE__SEARCH_PATH`,
`REDIS__KEY_PREFIX`), so every server of a run sees the same data.
"""

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from core.observability.asgi_types import ASGIApp
from core.runtime import Core
from examples.users.models import User
from examples.users.schemas import UserOut

TTL = 300


class BareLifespan(Core):
    """The core without its observability middleware (the unit of work stays: it is what makes
    the sessions commit before the response)."""

    def wrap_asgi(
        self, app: ASGIApp, *, observability: bool = True, unit_of_work: bool = True
    ) -> ASGIApp:
        return super().wrap_asgi(app, observability=False, unit_of_work=unit_of_work)


def _env() -> tuple[str, str, str, str]:
    return (
        os.environ["DATABASE_URL"],
        os.environ["REDIS_URL"],
        os.environ["DATABASE__SEARCH_PATH"],
        os.environ.get("REDIS__KEY_PREFIX", "hand:"),
    )


def _engine_args(schema: str, *, read_only: bool = False) -> dict[str, Any]:
    # dualcore's default pool (10 + 10 overflow) for every app, as services run it: under load
    # more clients than connections, so waiting for a connection is part of what is measured.
    server_settings = {"search_path": schema, "application_name": "bench"}
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    return {
        "pool_size": 10,
        "max_overflow": 10,
        "connect_args": {"server_settings": server_settings},
    }


def fastapi_hand() -> Any:
    """The hand-written FastAPI service, in the seed's style."""
    return _fastapi_hand(equal_work=False)


def fastapi_hand_ro() -> Any:
    """The hand-written FastAPI service doing the work of dualcore's read-only session."""
    return _fastapi_hand(equal_work=True)


def _fastapi_hand(*, equal_work: bool) -> Any:
    from fastapi import Depends, FastAPI, HTTPException

    url, redis_url, schema, prefix = _env()
    if equal_work:
        engine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", **_engine_args(schema, read_only=True)
        )
    else:
        engine = create_async_engine(url, pool_pre_ping=True, **_engine_args(schema))
    sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=not equal_work)
    redis = aioredis.Redis.from_url(redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis.aclose()
        await engine.dispose()

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session
            await session.commit()

    async def get_read_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    Session = Annotated[AsyncSession, Depends(get_read_session if equal_work else get_session)]
    tag = "hand-ro" if equal_work else "hand"
    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{user_id}")
    async def get_user(user_id: uuid.UUID, session: Session) -> UserOut:
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(404, "user not found")
        return UserOut.model_validate(user)

    @app.get("/users/{user_id}/cached")
    async def get_user_cached(user_id: uuid.UUID, session: Session) -> UserOut:
        key = f"{prefix}{tag}:user:{user_id}"
        raw = await redis.get(key)
        if raw is not None:
            return UserOut.model_validate_json(raw)
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(404, "user not found")
        out = UserOut.model_validate(user)
        await redis.set(key, out.model_dump_json(), ex=TTL)
        return out

    return app


def litestar_aa() -> Any:
    """The Litestar + advanced-alchemy service, as its documentation sets it up."""
    return _litestar_aa(equal_work=False)


def litestar_aa_ro() -> Any:
    """The Litestar + advanced-alchemy service on an autocommit, read-only engine."""
    return _litestar_aa(equal_work=True)


def _litestar_aa(*, equal_work: bool) -> Any:
    from advanced_alchemy.extensions.litestar import (
        AsyncSessionConfig,
        EngineConfig,
        SQLAlchemyAsyncConfig,
        SQLAlchemyPlugin,
    )
    from litestar import Litestar, get
    from litestar.di import Provide
    from litestar.exceptions import NotFoundException

    url, redis_url, schema, prefix = _env()
    redis = aioredis.Redis.from_url(redis_url)
    args = _engine_args(schema, read_only=equal_work)
    if equal_work:
        args["isolation_level"] = "AUTOCOMMIT"
    tag = "aa-ro" if equal_work else "aa"
    config = SQLAlchemyAsyncConfig(
        connection_string=url,
        before_send_handler="autocommit",
        session_config=AsyncSessionConfig(expire_on_commit=False, autoflush=not equal_work),
        engine_config=EngineConfig(**args),
    )

    def provide_redis() -> aioredis.Redis:
        return redis

    @get("/users/{user_id:uuid}")
    async def get_user(user_id: uuid.UUID, db_session: AsyncSession) -> UserOut:
        user = await db_session.get(User, user_id)
        if user is None:
            raise NotFoundException("user not found")
        return UserOut.model_validate(user)

    @get("/users/{user_id:uuid}/cached")
    async def get_user_cached(
        user_id: uuid.UUID, db_session: AsyncSession, cache: aioredis.Redis
    ) -> UserOut:
        key = f"{prefix}{tag}:user:{user_id}"
        raw = await cache.get(key)
        if raw is not None:
            return UserOut.model_validate_json(raw)
        user = await db_session.get(User, user_id)
        if user is None:
            raise NotFoundException("user not found")
        out = UserOut.model_validate(user)
        await cache.set(key, out.model_dump_json(), ex=TTL)
        return out

    async def close_redis() -> None:
        await redis.aclose()

    return Litestar(
        route_handlers=[get_user, get_user_cached],
        dependencies={"cache": Provide(provide_redis, sync_to_thread=False)},
        plugins=[SQLAlchemyPlugin(config=config)],
        on_shutdown=[close_redis],
    )


def _core() -> Any:
    """The core the dualcore apps run on: as shipped, or without its HTTP middleware when
    `BENCH_OBSERVABILITY=none` (the baseline of the observability stack's cost)."""
    return BareLifespan() if os.environ.get("BENCH_OBSERVABILITY") == "none" else Core()


def fastapi_dualcore() -> Any:
    """The example service on FastAPI, settings from the environment."""
    from examples.fastapi_app import create_app

    return create_app(_core())


def litestar_dualcore() -> Any:
    """The example service on Litestar, settings from the environment."""
    from examples.litestar_app import create_app

    return create_app(_core())


APPS = {
    "fastapi-dualcore": fastapi_dualcore,
    "fastapi-hand": fastapi_hand,
    "fastapi-hand-ro": fastapi_hand_ro,
    "litestar-dualcore": litestar_dualcore,
    "litestar-aa": litestar_aa,
    "litestar-aa-ro": litestar_aa_ro,
}
