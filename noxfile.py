"""Sessions: Python 3.10-3.13 x {FastAPI, Litestar}, core-only, lint, types, faults, bench.

The default sessions need nothing but Python (and reach PostgreSQL/Redis on 127.0.0.1 when they
run, else start embedded servers). `scaling` also needs the `pgbouncer` binary, and `prometheus`
the `prometheus` and `promtool` binaries, so they run only when asked for: `nox -s scaling`,
`nox -s prometheus`.
"""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = [
    "lint",
    "typecheck",
    "core_only",
    "tests",
    "faults",
    "wheel_demo",
    "docs",
    "contract",
]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


OPERATIONS = "tests/operations"
"""Tests that need the `prometheus` and `promtool` binaries: only the `prometheus` session runs
them, so no other session collects (or skips) them."""


DOCS_TESTS = "tests/integrations/test_docs.py"
"""The documentation's code blocks: only the `docs` session (with both frameworks and mkdocs
installed) runs them."""


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(
        "python",
        "-m",
        "pytest",
        f"--ignore={OPERATIONS}",
        f"--ignore={DOCS_TESTS}",
        *args,
        *session.posargs,
    )


@nox.session(python=PYTHONS)
@nox.parametrize("framework", ["fastapi", "litestar"])
def tests(session: nox.Session, framework: str) -> None:
    """The suite with one framework installed (the other is absent, proving independence).

    The FastAPI session of each Python runs every test; the Litestar session runs the tests that
    exercise a framework (`DUALCORE_TEST_SCOPE=framework`): the rest would run again unchanged.
    """
    session.install("-e", f".[{framework},embedded]", *_group("test"))
    session.env["DUALCORE_TEST_FRAMEWORKS"] = framework
    if framework == "litestar":
        session.env["DUALCORE_TEST_SCOPE"] = "framework"
    _pytest(session, "-m", "not slow")


@nox.session(python="3.11")
def core_only(session: nox.Session) -> None:
    """The core with neither framework installed: it must import and pass on its own."""
    session.install("-e", ".[embedded]", *_group("test"))
    session.env["DUALCORE_TEST_FRAMEWORKS"] = "none"
    session.run(
        "python",
        "-c",
        "from core import Base, get_settings, db_manager, redis_manager, lifespan\n"
        "import core.database, core.redis_client, core.runtime",
    )
    _pytest(session, "-m", "not slow")


@nox.session(python="3.11")
def faults(session: nox.Session) -> None:
    """Fault injection against private servers; prints the figures table."""
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("test"))
    _pytest(session, "-m", "slow", "-W", "error", "-s", "-k", "fault")


@nox.session(python="3.11")
def wheel_demo(session: nox.Session) -> None:
    """`dualcore demo` from a built wheel in a fresh environment and an empty folder, on both
    frameworks (embedded servers: nothing configured)."""
    session.install("-e", ".", *_group("test"), "uv")
    session.run("python", "-m", "pytest", "-m", "slow", "tests/integrations/test_demo_wheel.py")


@nox.session(python="3.11")
def contract(session: nox.Session) -> None:
    """schemathesis against both example services (every check, bounded examples) on a loopback
    port with real PostgreSQL and Redis; fails on a server error, an undocumented status, a
    response that breaks its schema. Prints the test cases run per framework; positional
    arguments go to scripts/contract.py (e.g. `-- --max-examples 100`)."""
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("contract"))
    session.run("python", "scripts/contract.py", *session.posargs)


@nox.session(python="3.11")
def scaling(session: nox.Session) -> None:
    """Replicas, PgBouncer, Sentinel and Cluster topologies started by the tests (opt-in: needs
    `pgbouncer` on PATH, e.g. `apt-get install pgbouncer`)."""
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("test"))
    _pytest(session, "-m", "slow", "-k", "scaling")


@nox.session(python="3.11")
def mutants(session: nox.Session) -> None:
    """Mutation testing of the modules in [tool.mutmut] against the fast tests (opt-in; long).

    Positional arguments narrow the run to mutant names, e.g. `nox -s mutants -- "core.http.*"`.
    Prints the kill rate per module; the survivors are in `mutmut results`.
    """
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("mutants"))
    # mutmut keeps unmutated copies it finds in mutants/: a stale copy would test old code.
    shutil.rmtree("mutants", ignore_errors=True)
    session.run("mutmut", "run", *session.posargs)
    listing = session.run("mutmut", "results", "--all", "true", silent=True)
    session.log("\n" + _kill_rates(str(listing or "")))


def _kill_rates(listing: str) -> str:
    """Killed/total per module from `mutmut results --all true` lines (`name: status`)."""
    counts: dict[str, list[int]] = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = name.split(".x_")[0].split(".x\u01c1")[0]
        if status.strip() == "not checked":
            continue
        tally = counts.setdefault(module, [0, 0])
        tally[0] += status.strip() in ("killed", "timeout")
        tally[1] += 1
    return "\n".join(
        f"{module}: {killed}/{total} killed ({killed / total:.1%})"
        for module, (killed, total) in sorted(counts.items())
    )


@nox.session(python="3.11")
def prometheus(session: nox.Session) -> None:
    """The Prometheus rules and Grafana dashboard in ops/ checked by a real Prometheus scraping
    the example services (opt-in: needs `prometheus` and `promtool` on PATH, e.g.
    `apt-get install prometheus`)."""
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("test"), "pyyaml")
    session.run("python", "-m", "pytest", OPERATIONS, "-s", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation: `mkdocs build --strict` (a broken link or a missing reference fails),
    then every code block of docs/ run as a test, and the generated configuration reference
    checked against the Settings model."""
    session.install("-e", ".[fastapi,litestar,embedded,msgspec]", *_group("test"), *_group("docs"))
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # a notice about MkDocs' future, on every build
    session.run("python", "scripts/settings_reference.py", "--check")
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site")
    session.run("python", "-m", "pytest", DOCS_TESTS, *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on core and integrations."""
    session.install("-e", ".[embedded]", *_group("typecheck"))
    session.run("mypy", "--strict", "core", "integrations")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against hand-written baselines; prints ratios."""
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("bench"))
    session.run("python", "benchmarks/run_all.py", *session.posargs)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """Run an example service (embedded servers unless URLs are set)."""
    session.install("-e", ".[fastapi,litestar,embedded]")
    session.run("dualcore", "demo", *session.posargs)
