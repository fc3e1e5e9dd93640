"""The frameworks this test run covers."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _frameworks() -> list[str]:
    """Frameworks under test: DUALCORE_TEST_FRAMEWORKS (comma list or "none"), else all
    installed. Naming one that is not installed is an error, never a silent skip."""
    installed = [f for f in ("fastapi", "litestar") if importlib.util.find_spec(f) is not None]
    wanted = os.environ.get("DUALCORE_TEST_FRAMEWORKS")
    if wanted is None:
        return installed
    names = [] if wanted.strip() == "none" else [w.strip() for w in wanted.split(",")]
    missing = [n for n in names if n not in installed]
    if missing:
        raise pytest.UsageError(f"DUALCORE_TEST_FRAMEWORKS names uninstalled {missing}")
    return names


FRAMEWORKS = _frameworks()
