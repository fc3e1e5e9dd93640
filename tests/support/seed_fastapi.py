"""The seed design's FastAPI usage, written as its snippets show it (`Depends(get_db)` in its
plain form, a repository and a service taking the session, a router, the `/health` handler).

No postponed annotations: FastAPI reads these annotations as objects at definition time.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.runtime import Core
from integrations.fastapi import DbSession, get_db, get_redis, install
from tests.support.seed_models import UserRepository, cached_user, write

Body = dict[str, str]


def build_app(core: Core, *, wired: bool = True, own_health: bool = True) -> FastAPI:
    """The seed's app around `core`; `wired=False` leaves out `install(app)`."""

    # 2. Repositories
    class DependsUserRepository(UserRepository):
        def __init__(self, db: AsyncSession = Depends(get_db)) -> None:
            super().__init__(db)

    async def get_user_repo(db: AsyncSession = Depends(get_db)) -> UserRepository:
        return UserRepository(db)

    async def user_repo_generator(
        db: AsyncSession = Depends(get_db),
    ) -> AsyncIterator[UserRepository]:
        yield UserRepository(db)

    # 3. Services with caching
    class UserService:
        def __init__(
            self, db: AsyncSession = Depends(get_db), redis: Redis = Depends(get_redis)
        ) -> None:
            self.db = db
            self.redis = redis

        async def get_cached_user(self, user_id: int) -> dict[str, Any] | None:
            return await cached_user(self.db, self.redis, core.settings.redis.key_prefix, user_id)

    async def get_user_service(service: UserService = Depends()) -> UserService:
        return service

    # 4. Endpoints
    router = APIRouter()

    @router.get("/users/{user_id}")
    async def get_user(
        user_id: int, service: UserService = Depends(get_user_service)
    ) -> dict[str, Any]:
        user = await service.get_cached_user(user_id)
        if user is None:
            raise HTTPException(status_code=404, detail="user not found")
        return user

    app = FastAPI()
    if own_health:

        @app.get("/health")
        async def health_check(
            db: AsyncSession = Depends(get_db), redis: Redis = Depends(get_redis)
        ) -> dict[str, str]:
            await db.execute(text("SELECT 1"))
            await redis.ping()
            return {"status": "healthy", "from": "seed"}

    @app.post("/write/plain")
    async def plain(body: Body, db: AsyncSession = Depends(get_db)) -> dict[str, bool]:
        return await write(db, body)

    @app.post("/write/annotated")
    async def annotated(
        body: Body, db: Annotated[AsyncSession, Depends(get_db)]
    ) -> dict[str, bool]:
        return await write(db, body)

    @app.post("/write/alias")
    async def alias(body: Body, db: DbSession) -> dict[str, bool]:
        return await write(db, body)

    @app.post("/write/repo-function")
    async def repo_function(
        body: Body, repo: UserRepository = Depends(get_user_repo)
    ) -> dict[str, bool]:
        return await write(repo.db, body)

    @app.post("/write/repo-class")
    async def repo_class(body: Body, repo: DependsUserRepository = Depends()) -> dict[str, bool]:
        return await write(repo.db, body)

    @app.post("/write/repo-generator")
    async def repo_generator(
        body: Body, repo: UserRepository = Depends(user_repo_generator)
    ) -> dict[str, bool]:
        return await write(repo.db, body)

    @app.post("/write/service")
    async def service(body: Body, svc: UserService = Depends(get_user_service)) -> dict[str, bool]:
        return await write(svc.db, body)

    app.include_router(router)
    if wired:
        install(app, core)
    else:
        app.state.dualcore = core
    return app


STYLES = [
    "plain",
    "annotated",
    "alias",
    "repo-function",
    "repo-class",
    "repo-generator",
    "service",
]
