"""The users service on Litestar: only routing lives here."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Litestar, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core.cache import Cache
from core.runtime import Core
from examples.users import UserCreate, UserOut, UserPage, UserService, UserUpdate
from examples.users.reads import read_user, read_user_cached
from integrations.litestar import CorePlugin


def provide_users(
    db_session: NamedDependency[AsyncSession], cache: NamedDependency[Cache]
) -> UserService:
    """The service on a read-write session."""
    return UserService(db_session, cache)


def provide_read_users(
    read_session: NamedDependency[AsyncSession], cache: NamedDependency[Cache]
) -> UserService:
    """The service on a read-only session (one service dependency per handler)."""
    return UserService(read_session, cache)


Users = NamedDependency[UserService]


@post("/users")
async def create_user(data: JSONBody[UserCreate], users: Users) -> UserOut:
    return await users.create(data)


@get("/users")
async def list_users(
    read_users: Users,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
) -> UserPage:
    return await read_users.list(limit=limit, offset=offset)


# The hot reads take the Core read fast path; the cached one takes a connection only on a miss.
# Each takes one dependency: Litestar resolves several independent ones concurrently, in a task
# group with a task each, which on a cache hit costs more than the lookup.
@get("/users/{user_id:uuid}", raises=[NotFoundException])
async def get_user(
    user_id: FromPath[uuid.UUID], read_connection: NamedDependency[AsyncConnection]
) -> UserOut:
    user = await read_user(read_connection, user_id)
    if user is None:
        raise NotFoundException("user not found")
    return user


@get("/users/{user_id:uuid}/cached", raises=[NotFoundException])
async def get_user_cached(user_id: FromPath[uuid.UUID], core: NamedDependency[Core]) -> UserOut:
    user = await read_user_cached(core.redis.cache, core.db, user_id)
    if user is None:
        raise NotFoundException("user not found")
    return user


@patch("/users/{user_id:uuid}", raises=[NotFoundException])
async def update_user(
    user_id: FromPath[uuid.UUID], data: JSONBody[UserUpdate], users: Users
) -> UserOut:
    user = await users.update(user_id, data)
    if user is None:
        raise NotFoundException("user not found")
    return user


@delete("/users/{user_id:uuid}", raises=[NotFoundException])
async def delete_user(user_id: FromPath[uuid.UUID], users: Users) -> None:
    if not await users.delete(user_id):
        raise NotFoundException("user not found")


def create_app(
    core: Core | None = None, dependencies: dict[str, Provide] | None = None
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
            "users": Provide(provide_users, sync_to_thread=False),
            "read_users": Provide(provide_read_users, sync_to_thread=False),
            **(dependencies or {}),
        },
        plugins=[CorePlugin(core if core is not None else Core())],
        # Leave process logging to the application (and the access log to the core).
        logging_config=None,
    )
