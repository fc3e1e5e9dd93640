"""FastAPI-only parts of the seed design: its own `/health` handler built on `Depends(get_db)`
and `Depends(get_redis)`, and what happens to `Depends(get_db)` in an app never wired."""

from __future__ import annotations

import pytest

from core.runtime import Lifespan
from core.unit_of_work import UnwiredSessionWarning
from tests.seed_fastapi import build_app
from tests.seed_models import TAKEN
from tests.test_seed_http import _client, _stored, core  # noqa: F401

pytestmark = pytest.mark.anyio


async def test_the_seed_health_handler_with_depends(core: Lifespan) -> None:  # noqa: F811
    async with _client(build_app(core)) as client:
        r = await client.get("/health")
    # The app's own /health, declared before install(), is the one that answers.
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "from": "seed"}


async def test_an_unwired_app_warns_with_the_line_that_fixes_it(core: Lifespan) -> None:  # noqa: F811
    app = build_app(core, wired=False)
    async with _client(app) as client:
        with pytest.warns(UnwiredSessionWarning, match=r"install\(app\)"):
            r = await client.post(
                "/write/plain", json={"email": TAKEN, "also": "late@x.org", "fail": ""}
            )
    # Without the ASGI layer the commit runs after the answer: the warning is the safeguard.
    assert r.status_code == 200
    assert await _stored(core, "late@x.org") == 0


async def test_an_unwired_app_is_named_at_start_up(core: Lifespan) -> None:  # noqa: F811
    from fastapi import FastAPI

    app = FastAPI(lifespan=core)  # install(app) forgotten
    with pytest.warns(UnwiredSessionWarning, match=r"install\(app\)"):
        core(app)
    wired = FastAPI(lifespan=core)
    wired.state.dualcore = core
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core(wired)
