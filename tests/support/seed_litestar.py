"""The seed design's usage on Litestar: the plugin's `db_session` and `redis` providers, and
providers of the service's own built on them (Litestar's equivalent of `Depends(get_db)`)."""

from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from core.runtime import Core
from integrations.litestar import CorePlugin
from tests.support.seed_models import UserRepository, cached_user, write

Body = dict[str, str]


def build_app(core: Core) -> Litestar:
    """The seed's app around `core`, wired by `CorePlugin`."""

    class UserService:
        def __init__(self, db: AsyncSession, redis: Redis) -> None:
            self.db = db
            self.redis = redis

        async def get_cached_user(self, user_id: int) -> dict[str, Any] | None:
            return await cached_user(self.db, self.redis, core.settings.redis.key_prefix, user_id)

    async def get_user_repo(db_session: NamedDependency[AsyncSession]) -> UserRepository:
        return UserRepository(db_session)

    async def user_repo_generator(
        db_session: NamedDependency[AsyncSession],
    ) -> AsyncIterator[UserRepository]:
        yield UserRepository(db_session)

    async def get_user_service(
        db_session: NamedDependency[AsyncSession], redis: NamedDependency[Redis]
    ) -> UserService:
        return UserService(db_session, redis)

    @get("/users/{user_id:int}")
    async def get_user(user_id: int, user_service: NamedDependency[UserService]) -> dict[str, Any]:
        user = await user_service.get_cached_user(user_id)
        if user is None:
            raise NotFoundException("user not found")
        return user

    @post("/write/plain", status_code=200)
    async def plain(
        data: JSONBody[Body], db_session: NamedDependency[AsyncSession]
    ) -> dict[str, bool]:
        return await write(db_session, data)

    @post("/write/repo-function", status_code=200)
    async def repo_function(
        data: JSONBody[Body], user_repo: NamedDependency[UserRepository]
    ) -> dict[str, bool]:
        return await write(user_repo.db, data)

    @post("/write/repo-generator", status_code=200)
    async def repo_generator(
        data: JSONBody[Body], repo_gen: NamedDependency[UserRepository]
    ) -> dict[str, bool]:
        return await write(repo_gen.db, data)

    @post("/write/service", status_code=200)
    async def service(
        data: JSONBody[Body], user_service: NamedDependency[UserService]
    ) -> dict[str, bool]:
        return await write(user_service.db, data)

    return Litestar(
        route_handlers=[get_user, plain, repo_function, repo_generator, service],
        dependencies={
            "user_repo": Provide(get_user_repo),
            "repo_gen": Provide(user_repo_generator),
            "user_service": Provide(get_user_service),
        },
        plugins=[CorePlugin(core)],
    )


STYLES = ["plain", "repo-function", "repo-generator", "service"]
