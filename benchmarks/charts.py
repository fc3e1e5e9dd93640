"""Charts of a benchmark run: every comparison's figure with its spread over the rounds.

One panel per part (session, cache, http, memory, middleware), one line per comparison: the
median (the figure in the table) as a dot, the interquartile range of the per-round figures as a
thick bar, their minimum to maximum as a thin whisker, and the comparison's target as a red
tick. A comparison measured once (the memory rows) has a dot only. Written as PNG and SVG next
to the run's Markdown table by `run_all.py`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

PART_AXES = {
    "session": "time ratio, ours / baseline (lower is better)",
    "cache": "time ratio, ours / baseline (lower is better)",
    "http": "req/s ratio, ours / baseline (higher is better)",
    "memory": "RSS ratio, late / early reading (lower is better)",
    "middleware": "served req/s lost to the stack, % (lower is better)",
}
PART_TITLES = {
    "session": "Sessions, primary-key read in process",
    "cache": "Cache hit",
    "http": "HTTP, uvicorn + wrk",
    "memory": "Memory growth",
    "middleware": "Observability stack",
}


class ChartRow(Protocol):
    """What a chart needs of a summary row (`run_all.Row`)."""

    target: str
    measured: float
    limit: float | None
    unit: str
    samples: tuple[float, ...]
    part: str


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _label(row: ChartRow) -> str:
    text = row.target.strip()
    if text[:1].isdigit() and text[1:2] == " ":
        text = text[2:]
    return text if row.limit is not None else f"({text})"


def draw(rows: Sequence[ChartRow], title: str, subtitle: str) -> Any:
    """A matplotlib figure of `rows`, one panel per part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PART_AXES if any(r.part == p for r in rows)]
    parts += sorted({r.part for r in rows} - set(parts))
    heights = [max(2, sum(r.part == p for r in rows)) for p in parts]
    fig, axes = plt.subplots(
        len(parts),
        1,
        figsize=(11, 0.8 + 0.42 * sum(heights) + 0.9 * len(parts)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, part in zip(axes[:, 0], parts, strict=True):
        mine = [r for r in rows if r.part == part]
        labels = [_label(r) for r in mine]
        ys = list(range(len(mine)))[::-1]
        parity = 0.0 if part == "middleware" else 1.0
        ax.axvline(parity, color="0.6", linestyle=":", linewidth=1)
        for y, row in zip(ys, mine, strict=True):
            colour = "tab:blue" if row.limit is not None else "0.45"
            if row.samples:
                lo, hi = min(row.samples), max(row.samples)
                q1, q3 = _quartiles(row.samples)
                ax.hlines(y, lo, hi, color=colour, linewidth=1)
                ax.vlines([lo, hi], y - 0.15, y + 0.15, color=colour, linewidth=1)
                ax.hlines(y, q1, q3, color=colour, linewidth=6, alpha=0.45)
            ax.plot([row.measured], [y], "o", color=colour, markersize=6, zorder=3)
            if row.limit is not None:
                ax.vlines(row.limit, y - 0.38, y + 0.38, color="tab:red", linewidth=2, zorder=2)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylim(-0.7, len(mine) - 0.3)
        ax.set_title(PART_TITLES.get(part, part), fontsize=10, loc="left")
        ax.set_xlabel(PART_AXES.get(part, ""), fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", color="0.9")
    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], marker="o", linestyle="", color="tab:blue", label="median over rounds"),
        Line2D([], [], color="tab:blue", linewidth=6, alpha=0.45, label="interquartile range"),
        Line2D([], [], color="tab:blue", linewidth=1, label="min to max"),
        Line2D([], [], color="tab:red", linewidth=2, label="target"),
        Line2D([], [], marker="o", linestyle="", color="0.45", label="(information, no target)"),
    ]
    fig.legend(handles=legend, loc="upper right", fontsize=8, ncol=3, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=12)
    fig.text(0.01, 1 - 0.45 / fig.get_figheight(), subtitle, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    return fig


def write(rows: Sequence[ChartRow], base: Path, title: str, subtitle: str) -> list[Path]:
    """Write `base`.png and `base`.svg; the paths written."""
    import matplotlib.pyplot as plt

    fig = draw(rows, title, subtitle)
    paths = [base.with_suffix(".png"), base.with_suffix(".svg")]
    try:
        fig.savefig(paths[0], dpi=110)
        fig.savefig(paths[1], metadata={"Date": None})
    finally:
        plt.close(fig)
    return paths
