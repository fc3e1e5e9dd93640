"""Embedded-server fixtures: one PostgreSQL and one Redis per module, and a `tmp_path` whose
servers' data is deleted afterwards, also where it was moved for the server account to reach it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.embedded import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """pytest's `tmp_path`; afterwards the data of the servers made in it is deleted."""
    yield tmp_path
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path.is_symlink():
            EmbeddedRedis(path).delete()


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL for the module; tests that stop it start it again."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg") / "data")
    try:
        server.start()
        yield server
    finally:
        server.delete()


@pytest.fixture(scope="module")
def rds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One Redis for the module; tests that stop it start it again."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis") / "data")
    try:
        server.start()
        yield server
    finally:
        server.delete()
