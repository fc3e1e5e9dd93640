"""Sessions: Python 3.10-3.13 x {FastAPI, Litestar}, core-only, lint, types, faults, bench.

The default sessions need nothing but Python (and reach PostgreSQL/Redis on 127.0.0.1 when they
run, else start embedded servers). `scaling` also needs the `pgbouncer` binary, so it runs only
when asked for: `nox -s scaling`.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "core_only", "tests", "faults"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


def _pytest(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "pytest", *args, *session.posargs)


@nox.session(python=PYTHONS)
@nox.parametrize("framework", ["fastapi", "litestar"])
def tests(session: nox.Session, framework: str) -> None:
    """The suite with one framework installed (the other is absent, proving independence)."""
    session.install("-e", f".[{framework},embedded]", *_group("test"))
    session.env["DUALCORE_TEST_FRAMEWORKS"] = framework
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
def scaling(session: nox.Session) -> None:
    """Replicas, PgBouncer, Sentinel and Cluster topologies started by the tests (opt-in: needs
    `pgbouncer` on PATH, e.g. `apt-get install pgbouncer`)."""
    session.install("-e", ".[fastapi,litestar,embedded]", *_group("test"))
    _pytest(session, "-m", "slow", "-k", "scaling")


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
