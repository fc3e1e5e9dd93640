"""`finish_shielded`: cleanup that always completes, and costs no task when it never waits."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

from core._aio import _start, deadline, finish_shielded

pytestmark = pytest.mark.anyio

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="caller")


def _count_tasks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loop = asyncio.get_running_loop()
    created = [0]
    original = loop.create_task

    def counted(*args: Any, **kwargs: Any) -> Any:
        created[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "create_task", counted)
    return created


async def test_cleanup_that_never_waits_runs_at_once_without_a_task_from_3_12(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = _count_tasks(monkeypatch)
    ran: list[str] = []

    async def cleanup() -> str:
        ran.append("cleanup")
        return "done"

    started = _start(cleanup())
    eager = sys.version_info >= (3, 12)
    # Eager: done before any turn of the event loop. Before 3.12 every cleanup is a task.
    assert (ran == ["cleanup"] and started.done()) is eager
    assert await finish_shielded(cleanup()) == "done"
    assert created == [0 if eager else 2]


async def test_cleanup_that_waits_finishes_though_its_caller_is_cancelled() -> None:
    release, waiting = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def cleanup() -> None:
        steps.append("started")
        waiting.set()
        await release.wait()
        await asyncio.sleep(0)
        steps.append("finished")

    caller = asyncio.ensure_future(finish_shielded(cleanup()))
    await waiting.wait()
    caller.cancel()
    await asyncio.sleep(0.01)
    assert not caller.done()  # still waiting for its cleanup
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["started", "finished"]


@pytest.mark.parametrize("waits", [False, True], ids=["at-once", "after-waiting"])
async def test_cleanup_errors_and_values_reach_the_caller(waits: bool) -> None:
    async def cleanup(fail: bool) -> int:
        if waits:
            await asyncio.sleep(0)
        if fail:
            raise LookupError("cleanup failed")
        return 7

    assert await finish_shielded(cleanup(False)) == 7
    with pytest.raises(LookupError, match="cleanup failed"):
        await finish_shielded(cleanup(True))


@pytest.mark.parametrize("waits", [False, True], ids=["at-once", "after-waiting"])
async def test_context_variables_set_by_cleanup_stay_in_the_cleanup(waits: bool) -> None:
    seen: list[str] = []

    async def cleanup() -> None:
        MARK.set("cleanup")
        if waits:
            await asyncio.sleep(0)
        seen.append(MARK.get())

    await finish_shielded(cleanup())
    assert seen == ["cleanup"]
    assert MARK.get() == "caller"


async def test_a_waiting_cleanup_gets_what_its_futures_deliver_and_sees_its_own_cancellation() -> (
    None
):
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()
    failing: asyncio.Future[int] = loop.create_future()
    forever: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def cleanup() -> str:
        seen.append(await answer)
        try:
            await failing
        except LookupError as exc:
            seen.append(str(exc))
        try:
            await forever
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "unreachable"

    started = _start(cleanup())
    answer.set_result(1)
    await asyncio.sleep(0)
    failing.set_exception(LookupError("no"))
    for _ in range(3):
        await asyncio.sleep(0)
    started.cancel()  # only the loop's shutdown does this to a shielded cleanup
    with pytest.raises(asyncio.CancelledError):
        await started
    assert seen == [1, "no", "cancelled"]


async def test_a_cleanup_bounded_by_its_own_deadline_is_cut_by_it_not_its_callers_task() -> None:
    """Work started eagerly must run as its own task: a deadline it enters binds to it."""

    async def cleanup() -> None:
        async with deadline(0.05):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await finish_shielded(cleanup())
    await asyncio.sleep(0.1)  # the caller goes on: nothing cancelled it
