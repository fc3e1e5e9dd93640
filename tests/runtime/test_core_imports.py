"""`core` is framework-agnostic: importing all of it loads no FastAPI, Litestar or Starlette."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter, so nothing imported by other tests (or plugins) can hide or fake a leak.
SCRIPT = """
import importlib, json, pkgutil, sys
import core
names = ["core"]
for info in pkgutil.walk_packages(core.__path__, "core."):
    if info.name.endswith(".__main__"):
        continue  # importing it runs the command line
    importlib.import_module(info.name)
    names.append(info.name)
leaked = sorted(m for m in ("fastapi", "litestar", "starlette") if m in sys.modules)
print(json.dumps({"modules": names, "leaked": leaked}))
assert 'fastapi' not in sys.modules and 'litestar' not in sys.modules
assert 'starlette' not in sys.modules
"""


def test_core_imports_no_web_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    # The walk really covered the package, not just its top.
    for expected in (
        "core.config",
        "core.database",
        "core.redis_client",
        "core.runtime",
        "core.health",
        "core.models",
        "core._aio",
    ):
        assert expected in report["modules"]


PUBLIC_API = """
import json, sys
import core
cheap = sorted(m for m in ("sqlalchemy", "redis", "pydantic", "asyncpg") if m in sys.modules)
import core.runtime  # as every adapter does, before the user's own `from core import ...`
from core import Base, Settings, get_settings, DatabaseManager, db_manager
from core import RedisManager, redis_manager, lifespan, Core
missing = [n for n in core.__all__ if getattr(core, n, None) is None]
print(json.dumps({
    "cheap": cheap,
    "missing": missing,
    "lifespan_is_instance": isinstance(lifespan, Core),
    "same_managers": lifespan.db is db_manager and lifespan.redis is redis_manager,
    "base_is_declarative": Base.__name__ == "Base" and hasattr(Base, "metadata"),
}))
"""


def test_the_package_is_the_public_api() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PUBLIC_API],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # `import core` alone loads none of the heavy libraries: names load on first use.
    assert report["cheap"] == []
    assert report["missing"] == []
    assert report["lifespan_is_instance"]
    assert report["same_managers"]
    assert report["base_is_declarative"]
