"""URL handling lives in core.urls: settings use it without pulling in the Redis clients, and no
core module reaches into another module's private names for it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from core.urls import SplitURL, normalise_pg_url, normalise_redis_url, redact_url

REPO = Path(__file__).resolve().parents[2]


def test_settings_do_not_import_the_redis_topology_clients() -> None:
    code = (
        "import sys\n"
        "from core.config import RedisSettings\n"
        "RedisSettings(url='redis+sentinel://:pw@s1,s2/mymaster/1')\n"
        "RedisSettings(url='redis+cluster://n1:7000')\n"
        "assert 'core.redis_client.topology' not in sys.modules, 'topology imported'\n"
        "assert 'redis' not in sys.modules, 'redis-py imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


URL_USERS = ["core/config.py", "core/redis_client/topology.py", "core/runtime.py", "core/cli.py"]


@pytest.mark.parametrize("path", URL_USERS)
def test_url_helpers_are_imported_by_public_names(path: str) -> None:
    tree = ast.parse((REPO / path).read_text())
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("core")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


def test_redact_url_is_no_longer_a_settings_name() -> None:
    import core.config

    assert not hasattr(core.config, "redact_url")
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"


def test_normalisers_return_the_url_and_its_secrets_apart() -> None:
    pg = normalise_pg_url("postgres://u:pw@h/d?sslpassword=k&sslmode=require")
    assert pg == SplitURL("postgresql+asyncpg://u@h/d?sslmode=require", "pw", {"sslpassword": "k"})
    redis = normalise_redis_url("rediss://:pw@h:6380/1?ssl_password=k&ssl_cert_reqs=none")
    assert redis == SplitURL("rediss://h:6380/1?ssl_cert_reqs=none", "pw", {"ssl_password": "k"})
