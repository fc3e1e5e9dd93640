"""The `dualcore` command line (also `python -m core`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

__all__ = ["main"]


def _load_settings() -> Any:
    from core.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        print("Invalid settings:", file=sys.stderr)
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"  {where}: {err['msg']}", file=sys.stderr)
        print("Fix the environment variables or .env file named above.", file=sys.stderr)
        raise SystemExit(2) from None


async def _check(settings: Any, as_json: bool) -> int:
    from core.database import DatabaseManager
    from core.diagnosis import diagnose
    from core.redis_client import RedisManager
    from core.runtime import secrets_of

    secrets = secrets_of(settings)
    rows: list[dict[str, Any]] = []
    for name, manager in (
        ("PostgreSQL", DatabaseManager(settings)),
        ("Redis", RedisManager(settings)),
    ):
        row: dict[str, Any] = {"dependency": name, "url": manager.safe_url}
        try:
            await asyncio.wait_for(manager.start(), 120)
            latency = await asyncio.wait_for(manager.ping(), 10)
            row.update(
                status="ok",
                latency_ms=round(latency * 1000, 2),
                version=await asyncio.wait_for(manager.server_version(), 10),
            )
        except Exception as exc:
            found = diagnose(exc, name, secrets)
            row.update(status="fail", error=found.cause, message=found.message, hint=found.hint)
        finally:
            try:
                await manager.close()
            except Exception as exc:  # closing a never-connected manager must not hide the table
                row.setdefault("close_error", type(exc).__name__)
        rows.append(row)

    if as_json:
        print(json.dumps({"settings": _masked(settings), "dependencies": rows}, indent=2))
    else:
        print("Effective configuration (secrets masked):")
        for line in json.dumps(_masked(settings), indent=2).splitlines():
            print("  " + line)
        print()
        print(f"{'dependency':<12} {'status':<7} {'latency':>10}  {'version / error'}")
        for row in rows:
            shown = f"{row['latency_ms']:.2f} ms" if "latency_ms" in row else "-"
            detail = row.get("version") or (
                f"{row['error']} at {row['url']}: {row['message']} (hint: {row['hint']})"
            )
            print(f"{row['dependency']:<12} {row['status']:<7} {shown:>10}  {detail}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _masked(settings: Any) -> Any:
    return json.loads(settings.model_dump_json())


def _cmd_check(args: argparse.Namespace) -> int:
    return asyncio.run(_check(_load_settings(), args.json))


def _cmd_demo(args: argparse.Namespace) -> int:
    from core.demo import run_demo

    return run_demo(framework=args.framework, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; subcommands register themselves here."""
    parser = argparse.ArgumentParser(
        prog="dualcore", description="Tools for services built on dualcore."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check",
        help="show the effective settings and test PostgreSQL and Redis",
        description="Load settings, print them with secrets masked, connect to PostgreSQL and "
        "Redis and print status, latency and server version. Exit 1 if anything fails.",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_cmd_check)

    demo = sub.add_parser(
        "demo",
        help="run the example users service",
        description="Run the example users service. Without DATABASE_URL/REDIS_URL it starts "
        "embedded PostgreSQL and Redis (data under ./.dualcore).",
    )
    demo.add_argument("--framework", choices=["fastapi", "litestar"], default="fastapi")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    demo.set_defaults(func=_cmd_demo)

    try:
        from core.migrations.cli import register as register_db
    except ImportError:
        pass
    else:
        register_db(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dualcore` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
