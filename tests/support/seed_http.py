"""Driving the seed apps over HTTP: a client that hands back the app's own 500s, and a count of
the seed users a test's writes really stored."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from core import Core
from tests.support.seed_models import SeedUser


def seed_client(app: Any) -> httpx.AsyncClient:
    """A client for `app`: the app's own 500 is what a test looks at, not an exception re-raised
    into the client."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def stored(core: Core, *emails: str) -> int:
    """How many of `emails` are stored."""
    async with core.db.get_session(read_only=True) as s:
        query = select(func.count()).select_from(SeedUser).where(SeedUser.email.in_(emails))
        return int(await s.scalar(query) or 0)
