"""HealthRegistry: concurrent bounded checks, statuses, readiness and a report safe to publish."""

from __future__ import annotations

import json
import logging

import anyio
import pytest

from core.health import CheckResult, HealthRegistry, HealthReport

pytestmark = pytest.mark.anyio

CANARY = "s3cr3t-CANARY"


async def ok() -> None:
    return None


async def slow_ok() -> None:
    await anyio.sleep(0.3)


async def hang() -> None:
    await anyio.sleep_forever()


async def broken() -> None:
    raise RuntimeError(f"connection to postgresql://u:{CANARY}@db failed")


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to start: run one after the other, the first would wait
    # until its timeout.
    a_started, b_started = anyio.Event(), anyio.Event()

    async def a() -> None:
        a_started.set()
        await b_started.wait()
        await slow_ok()

    async def b() -> None:
        b_started.set()
        await a_started.wait()
        await slow_ok()

    registry = HealthRegistry()
    registry.add("a", a)
    registry.add("b", b)
    report = await registry.run()
    assert [c.status for c in report.checks] == ["ok", "ok"]
    assert all(c.latency_ms >= 250 for c in report.checks)


async def test_timeout_is_per_check() -> None:
    stuck_timeout, fine_timeout = 0.1, 2.0
    stuck_cut_off = anyio.Event()

    async def stuck() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stuck_cut_off.set()

    async def fine() -> None:
        # Outlives the stuck check's timeout and ends only once that check was cut off, so
        # `ok` here means the stuck check was stopped at its own timeout, not at this one's.
        await stuck_cut_off.wait()

    registry = HealthRegistry()
    registry.add("stuck", stuck, timeout=stuck_timeout)
    registry.add("fine", fine, timeout=fine_timeout)
    report = await registry.run()
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {"stuck": "timeout", "fine": "ok"}
    stuck_result = next(c for c in report.checks if c.name == "stuck")
    assert stuck_timeout * 1000 * 0.9 <= stuck_result.latency_ms < fine_timeout * 1000
    assert not report.ready
    assert report.status_code == 503


async def test_exception_is_fail_without_details_in_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = HealthRegistry()
    registry.add("database", broken)
    report = await registry.run()
    (result,) = report.checks
    assert result.status == "fail"
    body = json.dumps(report.to_dict())
    assert "RuntimeError" not in body
    assert "connection to" not in body
    assert CANARY not in body
    assert CANARY not in caplog.text
    assert "database" in caplog.text


async def test_report_shape_and_readiness_with_optional_checks() -> None:
    registry = HealthRegistry()
    registry.add("postgresql", ok)
    registry.add("replica", broken, required=False)
    registry.add("search", hang, timeout=0.05, required=False)
    report = await registry.run()
    assert report.ready
    assert report.status_code == 200
    body = report.to_dict()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"postgresql", "replica", "search"}
    assert body["checks"]["replica"] == {
        "status": "fail",
        "latency_ms": body["checks"]["replica"]["latency_ms"],
        "required": False,
    }
    assert body["checks"]["search"]["status"] == "timeout"
    assert body["checks"]["postgresql"]["required"] is True
    json.dumps(body)  # JSON-ready


async def test_required_failure_makes_not_ready() -> None:
    registry = HealthRegistry()
    registry.add("postgresql", ok)
    registry.add("redis", broken)
    report = await registry.run()
    assert not report.ready
    assert report.status_code == 503
    assert report.to_dict()["status"] == "fail"


async def test_empty_registry_is_ready() -> None:
    report = await HealthRegistry().run()
    assert report.ready
    assert report.age is not None
    assert report.to_dict() == {"status": "ok", "checks": {}, "age_ms": round(report.age * 1000, 2)}


@pytest.mark.parametrize("cache_for", [-0.1, float("nan"), float("inf")])
def test_cache_for_must_be_finite_and_not_negative(cache_for: float) -> None:
    with pytest.raises(ValueError, match="cache_for"):
        HealthRegistry(cache_for=cache_for)


async def test_cache_for_zero_runs_the_checks_for_every_call_in_turn() -> None:
    calls: list[int] = []

    async def counted() -> None:
        calls.append(1)

    registry = HealthRegistry(cache_for=0)
    registry.add("counted", counted)
    for _ in range(3):
        report = await registry.run()
        assert report.ready
    assert len(calls) == 3


def test_duplicate_names_rejected() -> None:
    registry = HealthRegistry()
    registry.add("redis", ok)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("redis", ok, required=False)
    assert len(registry.checks) == 1


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_non_positive_timeout_rejected(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthRegistry().add("x", ok, timeout=timeout)


@pytest.mark.parametrize(
    ("statuses", "ready"),
    [
        ([("ok", True), ("ok", False)], True),
        ([("ok", True), ("fail", False)], True),
        ([("ok", True), ("timeout", False)], True),
        ([("fail", True), ("ok", False)], False),
        ([("timeout", True)], False),
        ([("fail", False)], True),
    ],
)
def test_readiness_rule(statuses: list[tuple[str, bool]], ready: bool) -> None:
    checks = tuple(
        CheckResult(f"c{i}", status, 1.0, required)  # type: ignore[arg-type]
        for i, (status, required) in enumerate(statuses)
    )
    report = HealthReport(checks)
    assert "age_ms" not in report.to_dict()  # not measured: no age is claimed
    assert report.ready is ready
    assert report.status_code == (200 if ready else 503)
    assert report.to_dict()["status"] == ("ok" if ready else "fail")
