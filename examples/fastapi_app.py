"""The users service on FastAPI: only routing lives here."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status

from core.cache import Cache
from core.runtime import Lifespan
from examples.users import UserCreate, UserOut, UserPage, UserService, UserUpdate
from integrations.fastapi import DbSession, ReadDbSession, install


async def get_cache(request: Request) -> Cache:
    """The cache of the app's core (async: FastAPI runs plain functions in a thread pool)."""
    core: Lifespan = request.app.state.dualcore
    return core.redis.cache


CacheDep = Annotated[Cache, Depends(get_cache)]


def create_app(core: Lifespan | None = None) -> FastAPI:
    """Build the app around `core` (default: the global lifespan built from settings)."""
    if core is None:
        core = Lifespan()
    app = FastAPI(title="dualcore users (FastAPI)", lifespan=core)
    install(app, core)

    @app.post("/users", status_code=status.HTTP_201_CREATED)
    async def create_user(data: UserCreate, session: DbSession, cache: CacheDep) -> UserOut:
        return await UserService(session, cache).create(data)

    @app.get("/users")
    async def list_users(
        session: ReadDbSession,
        cache: CacheDep,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> UserPage:
        return await UserService(session, cache).list(limit=limit, offset=offset)

    @app.get("/users/{user_id}")
    async def get_user(user_id: uuid.UUID, session: ReadDbSession, cache: CacheDep) -> UserOut:
        user = await UserService(session, cache).get(user_id)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return user

    @app.get("/users/{user_id}/cached")
    async def get_user_cached(
        user_id: uuid.UUID, session: ReadDbSession, cache: CacheDep
    ) -> UserOut:
        user = await UserService(session, cache).get_cached_user(user_id)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return user

    @app.patch("/users/{user_id}")
    async def update_user(
        user_id: uuid.UUID, data: UserUpdate, session: DbSession, cache: CacheDep
    ) -> UserOut:
        user = await UserService(session, cache).update(user_id, data)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return user

    @app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_user(user_id: uuid.UUID, session: DbSession, cache: CacheDep) -> Response:
        if not await UserService(session, cache).delete(user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return app
