"""The configuration reference, generated from the `Settings` model.

One list of fields (`settings_fields()`) feeds both renderings: the short table in README.md
(variable, default, notes) and the full reference page of the documentation,
docs/reference/configuration.md (variable, type, default, description, constraints, per group).

    python scripts/settings_reference.py           # rewrite both from the model
    python scripts/settings_reference.py --check   # exit 1 when either is out of date

The test suite fails when either file differs from what this module renders.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference" / "configuration.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
PLAIN_URL_NAMES = {("database", "url"): "DATABASE_URL", ("redis", "url"): "REDIS_URL"}


@dataclass(frozen=True)
class SettingsField:
    """One setting: where it lives, how it is spelled in the environment, what it accepts."""

    group: str
    name: str
    env: str
    alias: str | None
    type: str
    choices: tuple[str, ...]
    default: str
    description: str
    constraints: str
    secret: bool


def _default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if value == []:
        return "[]"
    return f"`{value}`"


def _constraints(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                parts.append(f"{symbol} {getattr(meta, name)}")
        if getattr(meta, "max_length", None) is not None:
            parts.append(f"max length {meta.max_length}")
    return ", ".join(parts)


def _pattern(field: Any) -> str | None:
    for meta in field.metadata:
        if getattr(meta, "pattern", None) is not None:
            return str(meta.pattern)
    return None


def _type_name(tp: Any) -> str:
    """A short, readable spelling of an annotation (`float | None`, `list[SecretStr]`)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "str"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return str(getattr(tp, "__name__", tp))


def _choices(tp: Any) -> tuple[str, ...]:
    if typing.get_origin(tp) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(tp))
    return ()


def _is_secret(tp: Any) -> bool:
    return tp is SecretStr or any(_is_secret(a) for a in typing.get_args(tp))


def settings_fields() -> list[SettingsField]:
    """Every field of every settings group, in the model's order."""
    found = []
    for group, gfield in Settings.model_fields.items():
        model = gfield.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for name, field in model.model_fields.items():
            found.append(
                SettingsField(
                    group=group,
                    name=name,
                    env=f"{group}__{name}".upper(),
                    alias=PLAIN_URL_NAMES.get((group, name)),
                    type=_type_name(field.annotation),
                    choices=_choices(field.annotation),
                    default=_default(field),
                    description=field.description or "",
                    constraints=_constraints(field),
                    secret=_is_secret(field.annotation),
                )
            )
    return found


def readme_table() -> str:
    """The README's table: variable, default, notes (description, limits, choices)."""
    rows = ["| variable | default | notes |", "|---|---|---|"]
    for f in settings_fields():
        env = f"`{f.env}`" + (f" or `{f.alias}`" if f.alias else "")
        notes = "; ".join(filter(None, [f.description, f.constraints]))
        if f.choices:
            notes = "; ".join(filter(None, [notes, "one of " + ", ".join(f.choices)]))
        rows.append(f"| {env} | {f.default} | {notes} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _html(text: str) -> str:
    """`text` for an HTML cell of a Markdown table (a `|` would end the cell)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "&#124;")


def reference_page() -> str:
    """The documentation's configuration reference, one table per settings group."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/settings_reference.py from core.config.Settings; "
        "do not edit by hand. -->",
        "",
        "Every setting, generated from the `Settings` model (`core.config`). Set them in the",
        "environment or in a `.env` file; groups nest with `__` (`DATABASE__POOL_SIZE=20`), and",
        "`DATABASE_URL` and `REDIS_URL` also work as plain names. In code, pass the same",
        'values as keyword arguments: `Settings(database={"pool_size": 20})`. Values outside',
        "the limits, unknown names and malformed values fail at start-up with the field's name.",
        "Settings typed `SecretStr` are never shown: reprs, dumps, logs and errors print `***`.",
        "",
    ]
    for group, gfield in Settings.model_fields.items():
        model = gfield.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines += [f"## `{group}`", "", f"`{model.__name__}`: {doc}", ""]
        lines += [
            "| variable | type | default | description | accepted values |",
            "|---|---|---|---|---|",
        ]
        for f in (f for f in settings_fields() if f.group == group):
            fmodel = model.model_fields[f.name]
            accepted = [f.constraints] if f.constraints else []
            if f.choices:
                accepted.append("one of " + ", ".join(f"`{c}`" for c in f.choices))
            pattern = _pattern(fmodel)
            if pattern:
                accepted.append(f"matches `{pattern}`")
            env = f"`{f.env}`" + (f"<br>or `{f.alias}`" if f.alias else "")
            lines.append(
                "| "
                + " | ".join(
                    [
                        env,
                        f"<code>{_html(f.type)}</code>",
                        f.default,
                        _cell(f.description),
                        _cell("; ".join(accepted)),
                    ]
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def render_readme(readme: str) -> str:
    """`readme` with the table between the markers replaced."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{readme_table()}\n{END}", readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    targets = {
        README: render_readme(README.read_text()),
        REFERENCE: reference_page(),
    }
    stale = [
        path for path, text in targets.items() if not path.exists() or path.read_text() != text
    ]
    for path in stale:
        rel = path.relative_to(ROOT)
        if args.check:
            sys.stdout.write(f"{rel} is out of date: run python scripts/settings_reference.py\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(targets[path])
            sys.stdout.write(f"{rel} updated\n")
    if not stale:
        sys.stdout.write("README.md and docs/reference/configuration.md are up to date\n")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
