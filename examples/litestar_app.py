"""The users service on Litestar: only routing lives here."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Litestar, Request, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from core.cache import Cache
from core.lifespan import Lifespan
from examples.users import UserCreate, UserOut, UserPage, UserService, UserUpdate
from integrations.litestar import CorePlugin


def provide_cache(request: Request[Any, Any, Any]) -> Cache:
    """The cache of the app's core."""
    core: Lifespan = request.app.state.dualcore
    return core.redis.cache


Session = NamedDependency[AsyncSession]
CacheDep = NamedDependency[Cache]


@post("/users")
async def create_user(data: JSONBody[UserCreate], db_session: Session, cache: CacheDep) -> UserOut:
    return await UserService(db_session, cache).create(data)


@get("/users")
async def list_users(
    read_session: Session,
    cache: CacheDep,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
) -> UserPage:
    return await UserService(read_session, cache).list(limit=limit, offset=offset)


@get("/users/{user_id:uuid}")
async def get_user(user_id: FromPath[uuid.UUID], read_session: Session, cache: CacheDep) -> UserOut:
    user = await UserService(read_session, cache).get(user_id)
    if user is None:
        raise NotFoundException("user not found")
    return user


@get("/users/{user_id:uuid}/cached")
async def get_user_cached(
    user_id: FromPath[uuid.UUID], read_session: Session, cache: CacheDep
) -> UserOut:
    user = await UserService(read_session, cache).get_cached_user(user_id)
    if user is None:
        raise NotFoundException("user not found")
    return user


@patch("/users/{user_id:uuid}")
async def update_user(
    user_id: FromPath[uuid.UUID], data: JSONBody[UserUpdate], db_session: Session, cache: CacheDep
) -> UserOut:
    user = await UserService(db_session, cache).update(user_id, data)
    if user is None:
        raise NotFoundException("user not found")
    return user


@delete("/users/{user_id:uuid}")
async def delete_user(user_id: FromPath[uuid.UUID], db_session: Session, cache: CacheDep) -> None:
    if not await UserService(db_session, cache).delete(user_id):
        raise NotFoundException("user not found")


def create_app(
    core: Lifespan | None = None, dependencies: dict[str, Provide] | None = None
) -> Litestar:
    """Build the app around `core` (default: the global lifespan built from settings);
    `dependencies` replace providers by name, the way tests override one."""
    return Litestar(
        route_handlers=[
            create_user,
            list_users,
            get_user,
            get_user_cached,
            update_user,
            delete_user,
        ],
        dependencies={
            "cache": Provide(provide_cache, sync_to_thread=False),
            **(dependencies or {}),
        },
        plugins=[CorePlugin(core if core is not None else Lifespan())],
        # Leave process logging to the application (and the access log to the core).
        logging_config=None,
    )
