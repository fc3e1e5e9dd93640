"""Render the README's configuration table from the Settings model.

Kept for `python scripts/readme_settings.py`; the table comes from `settings_reference`, which
also renders the documentation's configuration reference from the same fields.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from settings_reference import README, readme_table
from settings_reference import render_readme as render

__all__ = ["README", "readme_table", "render"]

if __name__ == "__main__":
    text = README.read_text()
    new = render(text)
    README.write_text(new)
    sys.stdout.write("README.md settings table " + ("updated\n" if new != text else "unchanged\n"))
