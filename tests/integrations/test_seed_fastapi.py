"""FastAPI-only parts of the seed design: its own `/health` handler built on `Depends(get_db)`
and `Depends(get_redis)`, and what happens to `Depends(get_db)` in an app never wired."""

from __future__ import annotations

import warnings

import pytest

from core.runtime import Core
from core.unit_of_work import UnwiredSessionWarning
from tests.support.seed_fastapi import build_app
from tests.support.seed_http import seed_client, stored
from tests.support.seed_models import TAKEN

pytestmark = pytest.mark.anyio


async def test_the_seed_health_handler_with_depends(seed_core: Core) -> None:
    async with seed_client(build_app(seed_core)) as client:
        r = await client.get("/health")
    # The app's own /health, declared before install(), is the one that answers.
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "from": "seed"}


async def test_an_unwired_app_warns_with_the_line_that_fixes_it(seed_core: Core) -> None:
    app = build_app(seed_core, wired=False)
    async with seed_client(app) as client:
        with pytest.warns(UnwiredSessionWarning, match=r"install\(app\)"):
            r = await client.post(
                "/write/plain", json={"email": TAKEN, "also": "late@x.org", "fail": ""}
            )
    # Without the ASGI layer the commit runs after the answer: the warning is the safeguard.
    assert r.status_code == 200
    assert await stored(seed_core, "late@x.org") == 0


async def test_an_unwired_app_is_named_at_start_up(seed_core: Core) -> None:
    from fastapi import FastAPI

    app = FastAPI(lifespan=seed_core)  # install(app) forgotten
    with pytest.warns(UnwiredSessionWarning, match=r"install\(app\)"):
        seed_core(app)
    wired = FastAPI(lifespan=seed_core)
    wired.state.dualcore = seed_core
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seed_core(wired)


async def test_the_db_session_alias_commits_before_the_answer_even_in_an_unwired_app(
    seed_core: Core,
) -> None:
    # DbSession's own dependency scope is what keeps this app honest: its commit runs when the
    # endpoint returns, so a commit the database refuses is the answer, never a 200.
    app = build_app(seed_core, wired=False)
    async with seed_client(app) as client:
        # The unwired warning has its own tests above.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnwiredSessionWarning)
            refused = await client.post(
                "/write/alias", json={"email": TAKEN, "also": "alias-late@x.org", "fail": ""}
            )
            clean = await client.post(
                "/write/alias", json={"email": "alias1@x.org", "also": "alias2@x.org", "fail": ""}
            )
            # Read while the client holds the answer: the rows are already there.
            assert await stored(seed_core, "alias1@x.org", "alias2@x.org") == 2
    assert refused.status_code == 500, refused.text
    assert await stored(seed_core, "alias-late@x.org") == 0
    assert clean.status_code == 200, clean.text
