"""Every code block of the documentation (docs/*.md) runs, as README.md's do (tests/codeblocks.py):
Python blocks against the real PostgreSQL and Redis, the pytest plugin's files as a test suite,
the migration commands against a database of their own, environment blocks as settings. Shell
lines must name commands, options, extras and sessions that exist. The configuration reference
must be the one generated from `Settings`, and the API reference must cover every public name.

Run by `nox -s docs`, after `mkdocs build --strict`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.codeblocks import block_env as docs_env  # noqa: F401 (a fixture)
from tests.support.codeblocks import (
    blocks,
    check_settings_block,
    fresh_database,  # noqa: F401 (a fixture)
    is_env_block,
    is_test_file,
    python_params,
    run_migration_block,
    run_plugin_suite,
    run_python_block,
)
from tests.support.frameworks import FRAMEWORKS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
PAGES = {str(path.relative_to(DOCS)): path.read_text() for path in sorted(DOCS.rglob("*.md"))}
BLOCKS = {page: blocks(text) for page, text in PAGES.items()}


def _python(page: str) -> list[str]:
    return [code for lang, code in BLOCKS[page] if lang == "python"]


def _params() -> list[object]:
    params = []
    for page in PAGES:
        prefix = page.removesuffix(".md").replace("/", "-") + "-block"
        for param in python_params(_python(page), FRAMEWORKS, prefix):
            params.append(pytest.param(page, *param.values, id=param.id))  # type: ignore[attr-defined]
    return params


SHELL = [(page, code) for page, found in BLOCKS.items() for lang, code in found if lang == "bash"]
ENV_BLOCKS = [
    pytest.param(code, id=f"{page}-{i}")
    for page, found in BLOCKS.items()
    for i, (lang, code) in enumerate(found)
    if is_env_block(lang, code)
]
SUITES = {page: _python(page) for page in PAGES if any(is_test_file(c) for c in _python(page))}


def test_there_are_pages_with_code() -> None:
    assert {"getting-started/fastapi.md", "getting-started/litestar.md"} <= set(PAGES)
    assert sum(len(_python(page)) for page in PAGES) >= 8


@pytest.mark.usefixtures("docs_env")
@pytest.mark.parametrize(("page", "code"), _params())
def test_python_block_runs(page: str, code: str) -> None:
    run_python_block(code, f"docs/{page}")


# The plugin's example app is the FastAPI example: the sessions with FastAPI run it.
if "fastapi" in FRAMEWORKS:

    @pytest.mark.parametrize("page", sorted(SUITES))
    def test_pytest_plugin_pages_run_as_a_test_suite(
        page: str,
        pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        database_url: str,
        redis_url: str,
    ) -> None:
        result = run_plugin_suite(pytester, monkeypatch, SUITES[page], database_url, redis_url)
        tests = sum(len(re.findall(r"^async def test_|^def test_", c, re.M)) for c in SUITES[page])
        result.assert_outcomes(passed=tests)


def _migration_blocks() -> list[str]:
    return [code for _, code in SHELL if code.startswith("dualcore db init")]


def test_migration_commands_run(tmp_path: Path, fresh_database: str) -> None:  # noqa: F811
    found = _migration_blocks()
    assert found, "the docs show the migration commands"
    for i, block in enumerate(found):
        (tmp_path / str(i)).mkdir()
        run_migration_block(block, tmp_path / str(i), fresh_database)


@pytest.mark.parametrize("block", ENV_BLOCKS)
def test_environment_blocks_are_valid_settings(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_settings_block(block, monkeypatch)


# --- shell lines ---------------------------------------------------------------------------------


def _nox_sessions() -> set[str]:
    return set(re.findall(r"^def (\w+)\(session", (ROOT / "noxfile.py").read_text(), re.M))


def _extras() -> set[str]:
    from importlib.metadata import metadata

    return set(metadata("dualcore").get_all("Provides-Extra") or [])


def _check_command(argv: list[str]) -> None:
    """A documented command that must exist with the options it is shown with."""
    if argv[:2] == ["pip", "install"]:
        for arg in argv[2:]:
            extras = re.fullmatch(r"(?:\.|dualcore)\[([\w,-]+)\]", arg)
            if extras:
                assert set(extras.group(1).split(",")) <= _extras(), arg
            else:
                assert arg in {"-e", "nox", "uv"}, arg
    elif argv[0] == "nox":
        if "-s" in argv:
            assert argv[argv.index("-s") + 1] in _nox_sessions(), argv
    elif argv[0] == "dualcore":
        if argv[1] == "db":
            return  # run by test_migration_commands_run
        from core.cli import build_parser

        build_parser().parse_args(argv[1:])
    elif argv[:2] == ["python", "benchmarks/run_all.py"]:
        shown = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
        usage = subprocess.run(
            [sys.executable, "benchmarks/run_all.py", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert usage.returncode == 0, usage.stderr
        for flag in shown:
            assert flag in usage.stdout, flag
    elif argv[:2] == ["apt-get", "install"]:
        assert argv[2:], argv
    else:
        raise AssertionError(f"a shell line the docs test does not know how to check: {argv}")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(line, id=f"{page}:{line[:40]}")
        for page, code in SHELL
        for line in code.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ],
)
def test_shell_lines_name_real_commands(line: str) -> None:
    if line.startswith("dualcore db"):
        assert any(line in block for block in _migration_blocks()), line
    command = line.split(" #", 1)[0]
    for part in command.split("&&"):
        _check_command(shlex.split(part))


# --- generated and reference pages ---------------------------------------------------------------


def test_configuration_reference_is_generated_from_settings() -> None:
    """README's table and docs/reference/configuration.md are what the generator renders."""
    done = subprocess.run(
        [sys.executable, "scripts/settings_reference.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_configuration_reference_lists_every_field() -> None:
    from core.config import Settings

    page = PAGES["reference/configuration.md"]
    for group, gfield in Settings.model_fields.items():
        model = gfield.annotation
        for name in getattr(model, "model_fields", {}):
            assert f"`{group.upper()}__{name.upper()}`" in page, (group, name)


# An adapter imports its framework: checked where it is installed (the docs session has both).
REFERENCE_PAGES = [("core", "reference/core.md")] + [
    (f"integrations.{fw}", f"reference/{fw}.md") for fw in FRAMEWORKS
]


@pytest.mark.parametrize(("module", "page"), REFERENCE_PAGES)
def test_api_reference_covers_every_public_name(module: str, page: str) -> None:
    names = set(__import__(module, fromlist=["__all__"]).__all__) - {"__version__"}
    text = PAGES[page]
    documented = set(re.findall(r"^::: [\w.]+\.(\w+)$", text, re.M))
    documented |= set(re.findall(r"^ +- (\w+)$", text, re.M))
    assert names <= documented, sorted(names - documented)


def test_benchmark_page_shows_a_real_chart_or_says_where_it_is_written() -> None:
    page = PAGES["benchmarks.md"]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    for image in images:
        assert (DOCS / image).is_file(), image
    assert "benchmarks/results/" in page


def test_fault_table_header_is_the_one_the_suite_prints() -> None:
    from tests.faults.harness import COLUMNS

    headers = [name for name, _ in COLUMNS]
    shown = [code for lang, code in BLOCKS["guarantees.md"] if code.startswith("scenario |")]
    assert shown == [" | ".join(headers) + "\n" + "-+-".join("-" * len(h) for h in headers) + "\n"]
