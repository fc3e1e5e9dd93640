"""The anchors a team would write instead of using dualcore: the same users service by hand.

- `fastapi_hand()`: plain FastAPI + SQLAlchemy + redis-py, in the seed's style: an
  `async_sessionmaker` session per request on an engine with `pool_pre_ping=True`, committed
  after the handler; the cached lookup is `redis.get` + `model_validate_json`, filled on a miss.
- `litestar_aa()`: Litestar + advanced-alchemy's SQLAlchemy plugin (its session dependency and
  its autocommit before-send handler), the same cached lookup with redis-py.

Both serve the example's `GET /users/{id}` and `GET /users/{id}/cached` with the example's
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
from core.runtime import Lifespan
from examples.users.models import User
from examples.users.schemas import UserOut

TTL = 300


class BareLifespan(Lifespan):
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


def _engine_args(schema: str) -> dict[str, Any]:
    # The same pool size for every app (BENCH_POOL_SIZE, set by the runner above the load's
    # concurrency), so no app pays for opening overflow connections.
    return {
        "pool_size": int(os.environ.get("BENCH_POOL_SIZE", "10")),
        "max_overflow": 10,
        "connect_args": {"server_settings": {"search_path": schema, "application_name": "bench"}},
    }


def fastapi_hand() -> Any:
    """The hand-written FastAPI service."""
    from fastapi import Depends, FastAPI, HTTPException

    url, redis_url, schema, prefix = _env()
    engine = create_async_engine(url, pool_pre_ping=True, **_engine_args(schema))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
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

    Session = Annotated[AsyncSession, Depends(get_session)]
    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{user_id}")
    async def get_user(user_id: uuid.UUID, session: Session) -> UserOut:
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(404, "user not found")
        return UserOut.model_validate(user)

    @app.get("/users/{user_id}/cached")
    async def get_user_cached(user_id: uuid.UUID, session: Session) -> UserOut:
        key = f"{prefix}hand:user:{user_id}"
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
    """The Litestar + advanced-alchemy service."""
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
    args = _engine_args(schema)
    config = SQLAlchemyAsyncConfig(
        connection_string=url,
        before_send_handler="autocommit",
        session_config=AsyncSessionConfig(expire_on_commit=False),
        engine_config=EngineConfig(
            pool_size=args["pool_size"],
            max_overflow=args["max_overflow"],
            connect_args=args["connect_args"],
        ),
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
        key = f"{prefix}aa:user:{user_id}"
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
    return BareLifespan() if os.environ.get("BENCH_OBSERVABILITY") == "none" else Lifespan()


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
    "litestar-dualcore": litestar_dualcore,
    "litestar-aa": litestar_aa,
}
