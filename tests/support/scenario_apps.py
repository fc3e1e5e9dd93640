"""The example apps plus a slow route, for scenario tests.

No postponed annotations here: the handlers are defined inside functions, and both frameworks
resolve their annotations at definition time from the local imports.
"""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.runtime import Core


def build_app(framework: str, core: Core) -> Any:
    """The example app of `framework` around `core`, plus a slow route for disconnect tests."""
    if framework == "fastapi":
        from examples.fastapi_app import create_app
        from integrations.fastapi import DbSession

        app = create_app(core)

        @app.get("/slow")
        async def slow(session: DbSession, seconds: float = 2.0) -> dict[str, str]:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
            return {"status": "done"}

        return app

    from litestar import get
    from litestar.di import NamedDependency
    from litestar.params import FromQuery

    from examples.litestar_app import create_app as create_litestar

    app = create_litestar(core)

    @get("/slow")
    async def slow_ls(
        db_session: NamedDependency[AsyncSession], seconds: FromQuery[float] = 2.0
    ) -> dict[str, str]:
        await db_session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return {"status": "done"}

    app.register(slow_ls)
    return app
