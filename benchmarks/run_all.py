"""Every benchmark of the performance targets, in one run, summarised in one table of ratios.

    python benchmarks/run_all.py [--quick] [--only session,cache,http,memory,middleware,peers]
                                 [--out benchmarks/results/latest.md]

Needs PostgreSQL and Redis (BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test;
BENCH_REDIS_URL, default redis://127.0.0.1:6379/0) and `wrk` on the PATH for the HTTP parts.
Each part works on its own schema and key prefix and removes them afterwards. The machine may
be shared and noisy: every comparison runs its variants back to back in alternating order and
reports the median of the per-round ratios. The table is printed and written to `--out`; a
chart of every comparison with its spread over the rounds and its target is written next to it
as PNG and SVG (`latest.png`, `latest.svg` for the default `--out`; needs matplotlib, in the
`bench` dependency group).

Rows are numbered by target:

| # | part | what is compared | target |
|---|---|---|---|
| 1 | http | example app vs seed-style FastAPI / Litestar + advanced-alchemy, req/s | >= 1.10x |
| 2 | cache | `get_or_set` hit vs `redis.get` + decode (json dict; pydantic model) | <= 1.10x |
| 3 | cache | in-process tier hit vs `redis.get` + decode; cached route vs by hand | 0.2x; 2x |
| 4 | session | read connection vs asyncpg `fetchrow`, primary-key read | <= 1.6x |
| 4 | http | `GET /users/{id}` (read connection) vs the equal-work ORM read-only app | >= 1.0x |
| 5 | peers | observability stack's CPU per request vs the peers' stack (bench_peers.py) | <= 0.7x |
| 6 | session | read-only session vs asyncpg; read-write session vs by hand | <= 1.5x; 1.05x |
| 6 | memory | RSS after 100,000 requests (new ids all along) vs after the first 10,000 | <= 1.05x |

A target whose feature does not exist yet is listed as "not built", a miss. The middleware part
(example app served with and without the observability stack, req/s lost) is information.

Next to the seed-style baselines, the session and HTTP parts also run an equal-work baseline
(the same one-round-trip read by hand: autocommit read-only engine, no pre-ping) and print
both ratios, as information: what a user gains by switching, and what dualcore's layer costs.

Verdicts and exit code: see `LEGEND`. `--quick` runs a short version whose figures are printed
without any verdict (too short to judge).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import bench_cache
import bench_example_middleware
import bench_http
import bench_memory
import bench_peers
import bench_session
from _common import Dataset, Pair, machine

PARTS = ["session", "cache", "http", "memory", "middleware", "peers"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.md"

PASS, MISS, NOISE, QUICK_VERDICT = "pass", "MISS", "within noise", "quick, no verdict"
EXIT_MET, EXIT_MISSED, EXIT_ERROR, EXIT_NOISE = 0, 1, 2, 3

LEGEND = f"""\
Verdicts: "{PASS}" when the measured figure is within its limit; "{MISS}" when it is not.
The observability rows have a control: a second server without the stack, measured in the
same rounds, whose "loss" can only be noise. Their noise column is that control's loss taken
as a distance from zero, and the rule is: "{PASS}" when the loss <= the limit, "{MISS}" only
when the loss > the limit + noise, "{NOISE}" in between. Rows without a limit are information.
A --quick run is too short to judge: its targets read "{QUICK_VERDICT}".
Ratios of times (session, cache) are variant/baseline, lower is better; HTTP ratios are req/s
dualcore/baseline, higher is better.
Exit code: {EXIT_MET} every target met (or a --quick run); {EXIT_MISSED} at least one {MISS};
{EXIT_NOISE} no {MISS} but at least one "{NOISE}"; {EXIT_ERROR} the run could not complete."""


@dataclass
class Row:
    """One line of the summary: a measured figure against its limit (None: information)."""

    target: str
    measured: float
    limit: float | None
    higher_is_better: bool = False
    unit: str = "x"
    noise: float | None = None
    """Allowance above the limit before a loss is a miss (from a control), in `unit`."""
    detail: str = ""
    samples: tuple[float, ...] = ()
    """The per-round figures whose median is `measured`, in `unit` (empty: one reading)."""
    part: str = ""

    @property
    def built(self) -> bool:
        """False for a target whose feature does not exist yet (measured is NaN)."""
        return not math.isnan(self.measured)

    def verdict(self, quick: bool) -> str:
        """pass / MISS / within noise; "" for information; no verdict in a quick run."""
        if self.limit is None:
            return ""
        if quick:
            return QUICK_VERDICT
        if not self.built:
            return MISS
        if self.higher_is_better:
            return PASS if self.measured >= self.limit else MISS
        if self.measured <= self.limit:
            return PASS
        if self.measured > self.limit + (self.noise or 0.0):
            return MISS
        return NOISE

    def cells(self, quick: bool) -> tuple[str, ...]:
        if not self.built:
            limit = f"{'>=' if self.higher_is_better else '<='} {self.limit}x"
            return self.target, "not built", limit, "", self.verdict(quick), self.detail
        if self.unit == "%":
            measured = f"{self.measured:+.1f}%"
            limit = "" if self.limit is None else f"<= {self.limit:.0f}%"
            noise = "" if self.noise is None else f"{self.noise:.1f}%"
        else:
            measured = f"{self.measured:.3f}x"
            sign = ">=" if self.higher_is_better else "<="
            limit = "" if self.limit is None else f"{sign} {self.limit:.2f}x"
            noise = "" if self.noise is None else f"{self.noise:.3f}x"
        return self.target, measured, limit, noise, self.verdict(quick), self.detail


@dataclass
class Plan:
    """How long each part runs."""

    session_rounds: int
    session_ops: int
    cache_rounds: int
    cache_ops: int
    http_rounds: int
    http_seconds: float
    http_connections: tuple[int, ...]
    memory_requests: int
    middleware_rounds: int
    middleware_seconds: float
    middleware_cpu_rounds: int
    middleware_cpu_requests: int
    peers_rounds: int
    peers_requests: int
    middleware_connections: int = 16


FULL = Plan(21, 300, 21, 300, 6, 5, (32, 128), 100_000, 18, 2, 41, 200, 21, 2000)
QUICK = Plan(5, 150, 5, 150, 2, 2, (32, 128), 20_000, 6, 1, 9, 200, 5, 500)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def session_part(ds: Dataset, plan: Plan) -> list[Row]:
    trips = await bench_session.round_trips(ds)
    samples: dict[Pair, list[float]] = {}
    times, ratios = await bench_session.measure(ds, plan.session_rounds, plan.session_ops, samples)
    for name, t in times.items():
        _say(f"  {name:24} {t:8.1f} µs/read  round trips/read {trips[name]}")

    def row(pair: Pair, target: str, limit: float | None, note: str = "") -> Row:
        t_var, t_base = times[pair.variant], times[pair.baseline]
        rt_var, rt_base = trips[pair.variant].split()[0], trips[pair.baseline].split()[0]
        detail = f"{t_var:.0f} vs {t_base:.0f} µs; round trips {rt_var} vs {rt_base}"
        return Row(
            target, ratios[pair], limit, detail=f"{detail}{note}", samples=tuple(samples[pair])
        )

    return [
        row(bench_session.RO_TARGET, "6 read-only session vs asyncpg (PK read)", 1.5),
        row(bench_session.RW_TARGET, "6 read-write session vs same code by hand", 1.05),
        row(bench_session.CONN_TARGET, "4 read connection vs asyncpg (PK read)", 1.6),
        row(
            Pair("dualcore read connection", "dualcore read-only"),
            "  read connection vs read-only session",
            None,
        ),
        row(bench_session.SWITCH, "  read-only session vs seed style (gain by switching)", None),
        row(
            bench_session.OWN_COST,
            "  read-only session vs equal work by hand (own layer)",
            None,
            "; autocommit read-only engine, no pre-ping",
        ),
        row(Pair("seed style", "asyncpg"), "  seed style vs asyncpg", None),
        row(Pair("hand ro (equal work)", "asyncpg"), "  equal work by hand vs asyncpg", None),
    ]


async def cache_part(plan: Plan) -> list[Row]:
    samples: dict[Pair, list[float]] = {}
    times, ratios = await bench_cache.measure(plan.cache_rounds, plan.cache_ops, samples)
    for name, t in times.items():
        _say(f"  {name:34} {t:8.1f} µs/call")
    rows = [
        Row(
            f"2 get_or_set hit vs redis.get + decode ({kind})",
            ratios[pair],
            1.10,
            detail=f"{times[pair.variant]:.0f} vs {times[pair.baseline]:.0f} µs; "
            "RedisManager(settings).cache, metrics hook on",
            samples=tuple(samples[pair]),
        )
        for pair, kind in bench_cache.TARGETS.items()
    ]
    rows += [
        Row(
            f"  {pair.variant} vs {pair.baseline}",
            ratio,
            None,
            detail=f"{times[pair.variant]:.0f} vs {times[pair.baseline]:.0f} µs",
            samples=tuple(samples[pair]),
        )
        for pair, ratio in ratios.items()
        if pair not in bench_cache.TARGETS and pair != bench_cache.LOCAL_TIER
    ]
    pair = bench_cache.LOCAL_TIER
    rows.append(
        Row(
            "3 local tier hit vs redis.get + decode (json dict)",
            ratios[pair],
            0.2,
            detail=f"{times[pair.variant]:.1f} vs {times[pair.baseline]:.0f} µs; "
            "CACHE__LOCAL_TIER=true, subscription live",
            samples=tuple(samples[pair]),
        )
    )
    return rows


async def http_part(ds: Dataset, plan: Plan) -> list[Row]:
    result = await bench_http.measure(
        ds, plan.http_rounds, plan.http_seconds, plan.http_connections
    )
    rows = []
    for ours, seed, equal in bench_http.GROUPS.values():
        local = ours + bench_http.LOCAL
        for case, endpoint in result.cases.items():
            # The uncached route reads on the read connection: against the equal-work app (an
            # ORM read-only session, one round trip) it is target 4's "ahead under HTTP".
            equal_limit = None if endpoint == CACHED else 1.0
            comparisons = [
                (ours, seed, "seed style", 1.10),
                (ours, equal, "equal work, ORM read-only session", equal_limit),
            ]
            if endpoint == CACHED:
                comparisons.append((local, seed, "seed style, local tier", 2.0))
            for mine, base, kind, limit in comparisons:
                rt_ours = result.trips[(mine, endpoint)].split()[0]
                rt_base = result.trips[(base, endpoint)].split()[0]
                number = (
                    " "
                    if limit is None
                    else "3"
                    if mine == local
                    else "4"
                    if base == equal
                    else "1"
                )
                rows.append(
                    Row(
                        f"{number} {case} {mine} vs {base} ({kind})",
                        result.ratios[(mine, base, case)],
                        limit,
                        higher_is_better=True,
                        detail=f"{result.rps[(mine, case)]:.0f} vs "
                        f"{result.rps[(base, case)]:.0f} req/s; "
                        f"db round trips/request {rt_ours} vs {rt_base}"
                        + _failures(result.failed.get((base, case), 0)),
                        samples=tuple(result.samples.get((mine, base, case), ())),
                    )
                )
    return rows


CACHED = "GET /users/{id}/cached"


def _failures(count: int) -> str:
    """The baseline's failed requests, when it had any (its rate counts only the others)."""
    return f"; baseline failed {count} requests (not counted)" if count else ""


async def memory_part(plan: Plan) -> list[Row]:
    rows = []
    n = plan.memory_requests
    for framework in ("fastapi", "litestar"):
        # A fresh process and a data set of its own: a user for every request, so the key
        # space grows all run long.
        r = await bench_memory.measure_isolated(framework, n)
        rows.append(
            Row(
                f"6 RSS after {n:,} / after {r.first:,} requests ({framework})",
                r.ratio,
                1.05,
                detail=f"{r.early / 2**20:.1f} -> {r.late / 2**20:.1f} MiB, "
                f"{r.per_request:+.0f} bytes/request; new ids all along",
            )
        )
    return rows


async def middleware_part(ds: Dataset, plan: Plan) -> list[Row]:
    served = await bench_example_middleware.measure_served(
        ds, plan.middleware_rounds, plan.middleware_seconds, plan.middleware_connections
    )
    cpu = await bench_example_middleware.measure_cpu(
        ds, plan.middleware_cpu_rounds, plan.middleware_cpu_requests
    )
    rows = [
        Row(
            f"  observability stack, req/s lost ({framework}, {label})",
            row.cost * 100,
            None,
            unit="%",
            noise=abs(row.control) * 100,
            detail=f"{row.rps:.0f} req/s with it; control {row.control * 100:+.1f}%",
            samples=tuple(loss * 100 for loss in row.losses),
        )
        for (framework, label), row in served.items()
    ]
    rows += [
        Row(
            f"  app CPU share in process ({framework}, {label})",
            cost * 100,
            None,
            unit="%",
            detail=f"{us:.0f} µs CPU/request with it; an upper bound",
        )
        for (framework, label), (us, cost) in cpu.items()
    ]
    return rows


async def peers_part(plan: Plan) -> list[Row]:
    rows = []
    for framework, peers in (
        ("fastapi", "asgi-correlation-id + prometheus-fastapi-instrumentator + uvicorn log"),
        ("litestar", "asgi-correlation-id + Litestar's Prometheus and logging middleware"),
    ):
        with tempfile.TemporaryDirectory(prefix="dualcore-peers-") as tmp:
            result = await bench_peers.measure(
                framework, plan.peers_rounds, plan.peers_requests, Path(tmp)
            )
        rows.append(
            Row(
                f"5 observability stack vs the peers' stack, CPU/request ({framework})",
                result.ratio,
                bench_peers.TARGET,
                detail=f"{result.cost('dualcore'):.1f} vs {result.cost('peers'):.1f} µs "
                f"over the bare app's {result.us['bare']:.1f}; peers: {peers}; "
                "access log to a file in both",
                samples=tuple(result.ratios),
            )
        )
    return rows


async def run(parts: list[str], plan: Plan) -> list[Row]:
    ds = Dataset()
    await ds.create()
    rows: list[Row] = []
    try:
        for part in parts:
            _say(f"[{time.strftime('%H:%M:%S')}] {part} ...")
            if part == "session":
                found = await session_part(ds, plan)
            elif part == "cache":
                found = await cache_part(plan)
            elif part == "http":
                found = await http_part(ds, plan)
            elif part == "memory":
                found = await memory_part(plan)
            elif part == "middleware":
                found = await middleware_part(ds, plan)
            else:
                found = await peers_part(plan)
            for row in found:
                row.part = part
            rows += found
    finally:
        await ds.drop()
    return rows


HEADER = ("target", "measured", "limit", "noise", "verdict", "detail")


def render(rows: list[Row], quick: bool) -> str:
    """The rows as a Markdown table, columns aligned for the terminal."""
    cells = [HEADER, *(r.cells(quick) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    lines = [line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(c) for c in cells[1:]]
    return "\n".join(lines)


def outcome(rows: list[Row], quick: bool) -> tuple[int, str]:
    """(exit code, summary line) from the verdicts."""
    verdicts = [r.verdict(quick) for r in rows if r.limit is not None]
    if quick:
        return EXIT_MET, f"quick run: {len(verdicts)} target(s) measured, none judged"
    missed, noisy = verdicts.count(MISS), verdicts.count(NOISE)
    if missed:
        return EXIT_MISSED, f"{missed} of {len(verdicts)} target(s) missed" + (
            f", {noisy} within noise" if noisy else ""
        )
    if noisy:
        return EXIT_NOISE, f"no target missed; {noisy} of {len(verdicts)} within noise"
    return EXIT_MET, f"all {len(verdicts)} target(s) met"


def report(rows: list[Row], quick: bool, elapsed: float) -> tuple[int, str]:
    """(exit code, the whole report as Markdown)."""
    code, summary = outcome(rows, quick)
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            f"- machine: {machine()}",
            f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
            f"- run: {'quick' if quick else 'full'}, {elapsed:.0f} s, "
            f"finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            "",
            render(rows, quick),
            "",
            LEGEND,
            "",
            f"**{summary}** (exit code {code})",
            "",
        ]
    )
    return code, text


def write_charts(rows: list[Row], quick: bool, out: Path) -> list[Path]:
    """The run's chart, as PNG and SVG next to `out`; [] when matplotlib is missing."""
    try:
        import charts
    except ImportError:  # pragma: no cover - charts.py is beside this file
        return []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _say("matplotlib is not installed (it is in the bench dependency group): no chart")
        return []
    kind = "quick run, too short to judge" if quick else "full run"
    title = f"dualcore benchmarks ({kind})"
    subtitle = f"{machine()} · {time.strftime('%Y-%m-%d %H:%M %Z')}"
    drawn = [r for r in rows if r.built]
    return charts.write(drawn, out.with_suffix(""), title, subtitle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short run, figures only, no verdict")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where the table is written as well (default {DEFAULT_OUT})",
    )
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    try:
        rows = asyncio.run(run(parts, plan))
    except Exception:
        traceback.print_exc()
        _say("the run did not complete: no verdict")
        return EXIT_ERROR
    code, text = report(rows, args.quick, time.monotonic() - started)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    _say(f"written to {args.out}")
    for path in write_charts(rows, args.quick, args.out):
        _say(f"chart written to {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
