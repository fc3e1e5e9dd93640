"""Render the README's configuration table from the Settings model.

`python scripts/readme_settings.py` rewrites the table in README.md; the test suite fails when
the table and the model disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.config import Settings

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


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


def settings_table() -> str:
    """The markdown table of every settings field."""
    rows = ["| variable | default | notes |", "|---|---|---|"]
    for group, gfield in Settings.model_fields.items():
        model = gfield.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for name, field in model.model_fields.items():
            env = f"`{group}__{name}`".upper()
            if (group, name) in {("database", "url"), ("redis", "url")}:
                env += f" or `{group.upper()}_URL`"
            notes = "; ".join(filter(None, [field.description or "", _constraints(field)]))
            annotation = getattr(field.annotation, "__args__", None)
            if annotation and all(isinstance(a, str) for a in annotation):
                notes = "; ".join(filter(None, [notes, "one of " + ", ".join(annotation)]))
            rows.append(f"| {env} | {_default(field)} | {notes} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    """`readme` with the table between the markers replaced."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{settings_table()}\n{END}", readme)


if __name__ == "__main__":
    text = README.read_text()
    new = render(text)
    README.write_text(new)
    sys.stdout.write("README.md settings table " + ("updated\n" if new != text else "unchanged\n"))
