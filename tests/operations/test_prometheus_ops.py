"""The operators' assets (ops/prometheus/rules.yml, ops/grafana/dualcore.json) checked by a real
Prometheus against the example service on both frameworks, single-process and multiprocess.

Every rule and every dashboard query is read from the files, so a new one is covered without
touching this module. Opt-in (`nox -s prometheus`): needs `prometheus` and `promtool` on PATH.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.config import Settings
from core.database import DatabaseManager
from core.migrations import upgrade_to_head
from core.testing.database import create_database, drop_database
from tests.operations.ops_stack import (
    DASHBOARD,
    JOB,
    REPO,
    RULES,
    Prometheus,
    Service,
    Traffic,
    binary,
    eventually,
    has_value,
    load_panels,
    load_rules,
    private_redis,
    run_prometheus,
    run_service,
)

# An alert reads `<signal> <comparison> <number>`; evaluating the signal with `bool` shows the
# whole expression working even while the alert is (rightly) silent.
ALERT_FORM = re.compile(
    r"^(?P<signal>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<number>-?[0-9.]+)\s*$", re.S
)
# Grafana variables the dashboard may use, and what they stand for against the test Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$job": JOB}
SEVERITIES = {"critical", "warning"}


def _alert_signal(expr: str) -> str:
    match = ALERT_FORM.match(expr.strip())
    assert match, f"alert expression is not `<signal> <comparison> <number>`: {expr}"
    return f"({match['signal']}) {match['op']} bool {match['number']}"


def _grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"unknown Grafana variables {leftover} (teach GRAFANA_VARIABLES): {expr}"
    return expr


# --- the files on their own ---------------------------------------------------------------


def test_rules_file_passes_promtool() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_alerts_are_complete_and_evaluable() -> None:
    alerts = [r for r in load_rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "DualcoreDependencyDown",
        "DualcoreCircuitBreakerOpen",
        "DualcoreDbPoolSaturated",
        "DualcoreHighErrorRatio",
        "DualcoreHighLatencyP99",
        "DualcoreLowCacheHitRatio",
    }
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name} fires on one evaluation: give it a `for:`"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        assert alert.get("annotations", {}).get("summary"), name
        _alert_signal(alert["expr"])


def test_dashboard_panels_are_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = load_panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            _grafana_to_promql(target["expr"])


# --- against a live service ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ops_database_url(database_url: str) -> Iterator[str]:
    """A database of this module's own with the example service's migrations applied."""

    async def create() -> str:
        url = await create_database(database_url, prefix="dualcore_ops")
        plain = url.render_as_string(hide_password=False)
        db = DatabaseManager(Settings(_env_file=None, database={"url": plain}))
        async with db:
            await upgrade_to_head(db, config_file=REPO / "alembic.ini")
        return plain

    url = asyncio.run(create())
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


@dataclass
class Stack:
    framework: str
    workers: int
    service: Service
    prometheus: Prometheus
    traffic: Traffic
    workdir: Path


MODES = {"single": 1, "multiprocess": 2}


@pytest.fixture(
    scope="module",
    params=[(f, m) for f in ("fastapi", "litestar") for m in MODES],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def stack(
    request: pytest.FixtureRequest,
    ops_database_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The example service of one framework under load, scraped by Prometheus with the rules."""
    framework, mode = request.param
    workdir = tmp_path_factory.mktemp(f"ops-{framework}-{mode}")
    workers = MODES[mode]
    with (
        run_service(
            framework,
            database_url=ops_database_url,
            redis_url=redis_url,
            workdir=workdir,
            workers=workers,
        ) as service,
        Traffic(service.url) as traffic,
        run_prometheus(service.url.removeprefix("http://"), RULES, workdir) as prom,
    ):
        stack = Stack(framework, workers, service, prom, traffic, workdir)

        def warmed_up() -> str | None:
            # Rates need two scrapes, ratios some traffic in their window, and the recording
            # rules one evaluation after that.
            if traffic.failures:
                return f"traffic failed: {traffic.failures[-3:]}"
            for probe in (
                "up == 1",
                "dualcore:cache_hit:ratio_rate5m",
                "dualcore:http_requests:rate5m > 0",
            ):
                if not has_value(prom.series(probe)):
                    return f"no value yet for {probe}"
            return None

        eventually(warmed_up, timeout=60)
        yield stack
        assert not traffic.failures, traffic.failures[-3:]
        assert traffic.statuses.get(200, 0) > 0, traffic.statuses


def _evaluate_all(prom: Prometheus, queries: list[tuple[str, str]]) -> list[str]:
    """Evaluate each `(name, promql)`; returns the problems (a parse error, no series, only NaN),
    and prints the series count of each query."""
    problems: list[str] = []
    for name, promql in queries:
        result: list[dict[str, Any]] = []

        def answered(promql: str = promql) -> str | None:
            nonlocal result
            result = prom.series(promql)
            return None if has_value(result) else "no series with a value"

        try:
            eventually(answered, timeout=10)
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
        except pytest.fail.Exception:
            problems.append(f"{name}: {len(result)} series, none with a value\n  {promql}")
        print(f"  {len(result):3d} series  {name}")
    return problems


def test_live_metrics_pass_promtool(stack: Stack) -> None:
    body = httpx.get(f"{stack.service.url}/metrics", timeout=10).text
    for family in ("http_requests_total{", "cache_events_total{", "db_pool_checked_out{"):
        assert family in body, f"{family} missing from the exposition"
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == result.stderr.strip() == "", result.stdout + result.stderr
    if stack.workers > 1:
        # Multiprocess mode really aggregated: value files from more than one worker.
        pids = {f.stem.rsplit("_", 1)[-1] for f in (stack.workdir / "multiproc").glob("*.db")}
        assert len(pids) >= stack.workers, sorted(pids)


def test_every_dashboard_query_returns_series(stack: Stack) -> None:
    doc = json.loads(DASHBOARD.read_text())
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            parts = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert parts, f"variable {variable['name']}: teach this test {query}"
            values = stack.prometheus.label_values(parts[2], parts[1])
            assert JOB in values, f"variable {variable['name']}: {values}"
    queries = [
        (f"{p['title']} [{t['refId']}]", _grafana_to_promql(t["expr"]))
        for p in load_panels()
        for t in p["targets"]
    ]
    print(f"\n{stack.framework} ({stack.workers} worker(s)): dashboard")
    problems = _evaluate_all(stack.prometheus, queries)
    assert not problems, "\n".join(problems)


def test_every_rule_returns_series(stack: Stack) -> None:
    rules = load_rules()
    queries: list[tuple[str, str]] = []
    for rule in rules:
        if "record" in rule:
            queries.append((f"{rule['record']} (expr)", rule["expr"]))
            queries.append((f"{rule['record']} (recorded)", rule["record"]))
        else:
            stack.prometheus.query(rule["expr"])  # the exact expression parses
            queries.append((f"{rule['alert']} (signal)", _alert_signal(rule["expr"])))
    print(f"\n{stack.framework} ({stack.workers} worker(s)): rules")
    problems = _evaluate_all(stack.prometheus, queries)
    loaded = {r["name"]: r for r in stack.prometheus.rules()}
    for rule in rules:
        name = rule.get("record") or rule["alert"]
        state = loaded.get(name)
        if state is None or state["health"] != "ok":
            problems.append(f"{name}: Prometheus reports {state}")
    assert not problems, "\n".join(problems)


# --- a dependency breaks ------------------------------------------------------------------


def _short_for(path: Path, workdir: Path) -> Path:
    """A copy of the rules whose alerts fire after one second instead of minutes."""
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    copy = workdir / "rules-short-for.yml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy


def _alert_states(prom: Prometheus, name: str) -> list[tuple[str, dict[str, str]]]:
    return [(a["state"], a["labels"]) for a in prom.alerts() if a["labels"]["alertname"] == name]


@pytest.mark.parametrize("framework", ["fastapi", "litestar"])
def test_dependency_down_fires_when_redis_stops(
    framework: str, ops_database_url: str, tmp_path: Path
) -> None:
    rules = _short_for(RULES, tmp_path)
    check = subprocess.run([binary("promtool"), "check", "rules", str(rules)], capture_output=True)
    assert check.returncode == 0, check.stdout
    with (
        private_redis(tmp_path) as (redis_url, redis_proc),
        run_service(
            framework, database_url=ops_database_url, redis_url=redis_url, workdir=tmp_path
        ) as service,
        Traffic(service.url) as traffic,
        run_prometheus(service.url.removeprefix("http://"), rules, tmp_path) as prom,
    ):

        def healthy_and_evaluated() -> str | None:
            ready = prom.series("dualcore:readiness_failures:ratio_rate1m == 0")
            return None if ready else "readiness ratio not yet recorded as 0"

        eventually(healthy_and_evaluated, timeout=60)
        # Rules with `for: 1s` have had several evaluations: a healthy service raises nothing.
        for name in ("DualcoreDependencyDown", "DualcoreCircuitBreakerOpen"):
            assert _alert_states(prom, name) == [], f"{name} raised while Redis is up"
        assert not traffic.failures, traffic.failures[-3:]

        redis_proc.terminate()
        redis_proc.wait(timeout=10)

        def firing() -> str | None:
            down = _alert_states(prom, "DualcoreDependencyDown")
            breaker = _alert_states(prom, "DualcoreCircuitBreakerOpen")
            if not any(s == "firing" for s, _ in down):
                return f"DualcoreDependencyDown: {down}"
            if not any(s == "firing" and labels["name"] == "redis" for s, labels in breaker):
                return f"DualcoreCircuitBreakerOpen: {breaker}"
            return None

        started = time.monotonic()
        eventually(firing, timeout=90)
        print(f"\n{framework}: firing {time.monotonic() - started:.1f}s after Redis stopped")
        for name in ("DualcoreDependencyDown", "DualcoreCircuitBreakerOpen"):
            for state, labels in _alert_states(prom, name):
                print(f"  {state:8s} {labels}")
                assert labels["instance"] == service.url.removeprefix("http://"), labels
        # The database stayed up: its breaker raised nothing.
        breakers = [
            labels["name"] for _, labels in _alert_states(prom, "DualcoreCircuitBreakerOpen")
        ]
        assert breakers == ["redis"], breakers
        assert traffic.statuses.get(503, 0) > 0, traffic.statuses
