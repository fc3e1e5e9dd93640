"""The users service on FastAPI: only routing lives here."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from pydantic import BaseModel

from core.runtime import Core
from examples.users import UserCreate, UserOut, UserPage, UserService, UserUpdate
from examples.users.reads import read_user, read_user_cached
from integrations.fastapi import (
    Cache,
    DbSession,
    ReadDbConnection,
    ReadDbSession,
    get_core,
    install,
)


class ErrorDetail(BaseModel):
    """FastAPI's body for an `HTTPException`."""

    detail: str


NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"description": "No user with this id", "model": ErrorDetail}
}
# FastAPI answers a body that is not JSON at all with 400 (and one that does not fit with 422).
BAD_BODY: dict[int | str, dict[str, object]] = {
    400: {"description": "The body is not valid JSON", "model": ErrorDetail}
}


def create_app(core: Core | None = None) -> FastAPI:
    """Build the app around `core` (default: a `Core` built from the settings)."""
    app = FastAPI(title="dualcore users (FastAPI)")
    install(app, core if core is not None else Core())

    @app.post("/users", status_code=status.HTTP_201_CREATED, responses=BAD_BODY)
    async def create_user(data: UserCreate, session: DbSession, cache: Cache) -> UserOut:
        return await UserService(session, cache).create(data)

    @app.get("/users")
    async def list_users(
        session: ReadDbSession,
        cache: Cache,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> UserPage:
        return await UserService(session, cache).list(limit=limit, offset=offset)

    # The hot reads take the Core read fast path; the cached one takes a connection only on a miss.
    @app.get("/users/{user_id}", responses=NOT_FOUND)
    async def get_user(user_id: uuid.UUID, conn: ReadDbConnection) -> UserOut:
        user = await read_user(conn, user_id)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return user

    @app.get("/users/{user_id}/cached", responses=NOT_FOUND)
    async def get_user_cached(
        user_id: uuid.UUID, cache: Cache, core: Annotated[Core, Depends(get_core)]
    ) -> UserOut:
        user = await read_user_cached(cache, core.db, user_id)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return user

    @app.patch("/users/{user_id}", responses={**NOT_FOUND, **BAD_BODY})
    async def update_user(
        user_id: uuid.UUID, data: UserUpdate, session: DbSession, cache: Cache
    ) -> UserOut:
        user = await UserService(session, cache).update(user_id, data)
        if user is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return user

    @app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
    async def delete_user(user_id: uuid.UUID, session: DbSession, cache: Cache) -> Response:
        if not await UserService(session, cache).delete(user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return app
