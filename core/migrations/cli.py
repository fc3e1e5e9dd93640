"""`dualcore db ...`: the migration commands on the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["register"]

# SQLSTATE classes that mean "could not connect or log in", not "a migration failed".
_CONNECTION_SQLSTATES = ("08", "28", "3D000", "57P03", "53300")


def register(subparsers: Any) -> None:
    """Add the `db` command and its subcommands to the `dualcore` parser."""
    db = subparsers.add_parser(
        "db",
        help="database migrations (Alembic): init, revision, upgrade, downgrade...",
        description="Database migrations with Alembic, connected through the service's settings "
        "(DATABASE_URL, DATABASE__PASSWORD or DATABASE_URL=embedded); alembic.ini never holds "
        "the URL.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default="alembic.ini",
        metavar="PATH",
        help="Alembic configuration file (default: ./alembic.ini)",
    )
    sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], **text: str) -> Any:
        parser = sub.add_parser(name, parents=[common], **text)
        parser.set_defaults(func=func)
        return parser

    init = command(
        "init",
        _cmd_init,
        help="create the migrations folder and alembic.ini",
        description="Create DIR with an async env.py, script.py.mako and versions/, and an "
        "alembic.ini (at --config) pointing at DIR and at the models' metadata.",
    )
    init.add_argument("directory", nargs="?", default="migrations", metavar="DIR")
    init.add_argument(
        "--metadata",
        required=True,
        metavar="MODULE:ATTR",
        help="the models' MetaData, e.g. app.models:Base.metadata",
    )

    revision = command(
        "revision",
        _cmd_revision,
        help="create a new revision file",
        description="Create a revision file; with --autogenerate it holds the difference "
        "between the models and the database.",
    )
    revision.add_argument("-m", "--message", required=True, help="what the revision does")
    revision.add_argument(
        "--autogenerate", action="store_true", help="compare the models with the database"
    )
    revision.add_argument("--rev-id", help="use this revision id instead of a random one")

    upgrade = command(
        "upgrade",
        _cmd_upgrade,
        help="apply migrations (default: up to head)",
        description="Apply migrations up to REV (default: head).",
    )
    upgrade.add_argument("revision", nargs="?", default="head", metavar="REV")
    upgrade.add_argument("--sql", action="store_true", help="print the SQL instead of running it")

    downgrade = command(
        "downgrade",
        _cmd_downgrade,
        help="revert migrations down to REV",
        description="Revert migrations down to REV (a revision id, -1 for one step, or base).",
    )
    downgrade.add_argument("revision", metavar="REV")
    downgrade.add_argument("--sql", action="store_true", help="print the SQL instead of running it")

    current = command(
        "current",
        _cmd_current,
        help="show the revision the database is at",
        description="Show the revision(s) the database is at.",
    )
    current.add_argument("-v", "--verbose", action="store_true")

    history = command(
        "history",
        _cmd_history,
        help="list the revisions, newest first",
        description="List the revisions, newest first (no database needed).",
    )
    history.add_argument("-v", "--verbose", action="store_true")

    command(
        "check",
        _cmd_check,
        help="fail if the models differ from the migrated database",
        description="Exit 1 if autogenerate would find changes, i.e. a revision is missing.",
    )


# --- commands ------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    from core.migrations import init

    def run(_: Any) -> None:
        ini = init(args.directory, args.metadata, config_file=args.config)
        print(f"created {args.directory}/ and {ini}")
        print("next: dualcore db revision --autogenerate -m 'initial schema'")

    return _guard(run, settings=None)


def _cmd_revision(args: argparse.Namespace) -> int:
    from core.migrations import revision

    def run(settings: Any) -> None:
        script = revision(
            _config(args, settings), args.message, args.autogenerate, rev_id=args.rev_id
        )
        print(f"created revision {script.revision}: {script.path}")

    return _guard(run)


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from core.migrations import upgrade

    def run(settings: Any) -> None:
        upgrade(_config(args, settings), args.revision, sql=args.sql)

    return _guard(run)


def _cmd_downgrade(args: argparse.Namespace) -> int:
    from core.migrations import downgrade

    def run(settings: Any) -> None:
        downgrade(_config(args, settings), args.revision, sql=args.sql)

    return _guard(run)


def _cmd_current(args: argparse.Namespace) -> int:
    from alembic.script import ScriptDirectory

    from core.migrations import current

    def run(settings: Any) -> None:
        cfg = _config(args, settings)
        revisions = current(cfg)
        if not revisions:
            print("no migration applied yet (run `dualcore db upgrade`)")
        script = ScriptDirectory.from_config(cfg)
        for rev in revisions:
            found = script.get_revision(rev)
            print(found.cmd_format(args.verbose) if found else f"{rev} (not in {script.dir})")

    return _guard(run)


def _cmd_history(args: argparse.Namespace) -> int:
    from core.migrations import history

    def run(settings: Any) -> None:
        scripts = history(_config(args, settings))
        if not scripts:
            print("no revisions yet (run `dualcore db revision --autogenerate -m ...`)")
        for script in scripts:
            print(
                script.cmd_format(
                    args.verbose, include_branches=True, include_doc=True, include_parents=True
                )
            )

    return _guard(run, settings=None)


def _cmd_check(args: argparse.Namespace) -> int:
    from core.migrations import check

    def run(settings: Any) -> None:
        check(_config(args, settings))
        print("the models match the migrations")

    return _guard(run)


# --- plumbing ------------------------------------------------------------------------------


def _config(args: argparse.Namespace, settings: Any) -> Any:
    from core.migrations import load_config

    return load_config(args.config, settings=settings)


_NEEDS_SETTINGS = object()


def _guard(run: Callable[[Any], None], settings: Any = _NEEDS_SETTINGS) -> int:
    """Run one command; turn every expected failure into a message and exit status 1."""
    from alembic.util import CommandError

    from core.migrations import MigrationError

    if settings is _NEEDS_SETTINGS:
        settings = _load_settings()
        if settings is None:
            return 2
    try:
        with _alembic_progress():
            run(settings)
    except (MigrationError, CommandError) as exc:
        _error(_scrub(str(exc), settings))
        return 1
    except Exception as exc:
        if settings is not None and _is_connection_error(exc):
            from core.urls import redact_url

            url = redact_url(settings.database.url)
            _error(
                f"cannot connect to PostgreSQL at {url}: {_describe(exc, settings)}\n"
                "Is the server up, and are DATABASE_URL / DATABASE__PASSWORD right?"
            )
        else:
            _error(f"migration failed: {_describe(exc, settings)}")
        return 1
    return 0


def _load_settings() -> Any:
    from pydantic import ValidationError

    from core.config import Settings

    try:
        from_env: Any = Settings
        return from_env()
    except ValidationError as exc:
        lines = ["invalid settings:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"  {where}: {err['msg']}")
        lines.append("Fix the environment variables or .env file named above.")
        _error("\n".join(lines))
        return None


@contextmanager
def _alembic_progress() -> Iterator[None]:
    """Show Alembic's "Running upgrade ..." lines on stderr while a command runs."""
    logger = logging.getLogger("alembic")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_progress_only)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


_CHATTER = ("Context impl", "Will assume", "setting up autogenerate plugin")


def _progress_only(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_CHATTER)


def _is_connection_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError, asyncio.TimeoutError)):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_CONNECTION_SQLSTATES):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def _innermost(exc: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's wrappers (it names the real cause)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _describe(exc: BaseException, settings: Any) -> str:
    shown = _innermost(exc)
    text = str(shown).strip() or "no details"
    # SQLAlchemy appends a background link; the first lines carry the reason.
    text = "\n".join(text.splitlines()[:6])
    return _scrub(f"{type(shown).__name__}: {text}", settings)


def _scrub(text: str, settings: Any) -> str:
    if settings is not None:
        for group in (settings.database, settings.redis):
            if group.password is not None and group.password.get_secret_value():
                text = text.replace(group.password.get_secret_value(), "***")
    return text


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
