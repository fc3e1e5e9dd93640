"""`dualcore demo`: run the example users service, on embedded servers unless URLs are set."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

__all__ = ["run_demo"]

_URL_NAMES = {"DATABASE": ("DATABASE_URL", "DATABASE__URL"), "REDIS": ("REDIS_URL", "REDIS__URL")}


def _configured(names: tuple[str, ...]) -> bool:
    from dotenv import dotenv_values

    env_file = {}
    if Path(".env").exists():
        env_file = {k.upper(): v for k, v in dotenv_values(".env").items()}
    return any(os.environ.get(n) or os.environ.get(n.lower()) or env_file.get(n) for n in names)


def run_demo(*, framework: str, host: str, port: int) -> int:
    """Serve the example app with uvicorn until interrupted; returns an exit status."""
    for group, names in _URL_NAMES.items():
        if not _configured(names):
            os.environ[f"{group}_URL"] = "embedded"
            print(f"{group}_URL not set: using an embedded server (data in ./.dualcore)")

    root = _example_root(framework)
    if root is None:
        print("The example service is missing from this installation: reinstall dualcore.")
        return 2
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(f"examples.{framework}_app")
    except ModuleNotFoundError as exc:
        print(f"{exc.name} is not installed: pip install 'dualcore[{framework},embedded]'")
        return 2

    import uvicorn

    from core.config import get_settings
    from core.migrations import upgrade_to_head
    from core.runtime import Core

    get_settings.cache_clear()

    async def migrate(core: Core) -> None:
        await upgrade_to_head(core.db, root / "examples" / "migrations")

    core = Core(on_startup=[migrate])
    app = module.create_app(core)
    print(f"dualcore demo ({framework}) on http://{host}:{port}")
    print(f"  try: curl -s http://{host}:{port}/health/ready")
    body = '{"email": "ada@example.com", "name": "Ada"}'
    print(
        f"       curl -s -X POST http://{host}:{port}/users "
        f"-H 'content-type: application/json' -d '{body}'"
    )
    _show_dualcore_logs()
    # dualcore's access log replaces uvicorn's: one line per request, with route and request id.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    return 0


def _example_root(framework: str) -> Path | None:
    """The folder holding the example service's `examples` package: the current directory in a
    checkout (so edits to the example show), else the copy shipped inside the package."""
    here = Path(__file__).resolve().parent
    for root in (Path.cwd(), here / "_demo", here.parent):
        if (root / "examples" / f"{framework}_app.py").is_file():
            return root
    return None


def _show_dualcore_logs() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger("dualcore")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
