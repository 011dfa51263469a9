"""Critical-difference diagram (Demšar 2006, figure 1) drawn with matplotlib's Agg backend: mean
ranks on an axis (1 = best, at the left), each configuration's name joined to its rank, the CD as
a bar above the axis, and thick bars joining configurations not significantly different."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tlbench.report.friedman import cliques  # noqa: E402

DPI = 110


def draw_cd_diagram(mean_ranks: dict[str, float], cd: float, alpha: float, path: Path) -> None:
    """Draw the CD diagram of `mean_ranks` (configuration -> mean rank) to `path` as a PNG."""
    names = sorted(mean_ranks, key=mean_ranks.get)
    ranks = np.array([mean_ranks[name] for name in names])
    k, half = len(names), (len(names) + 1) // 2
    fig = Figure(figsize=(8, 1.6 + 0.32 * half + 0.2 * len(cliques(ranks, cd))))
    ax = fig.add_axes((0.32, 0.05, 0.36, 0.75))
    ax.set_xlim(1, k)
    ax.set_ylim(-half - 1 - 0.4 * len(cliques(ranks, cd)), 1.6)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for tick in range(1, k + 1):
        ax.vlines(tick, 0, 0.25, color="black", lw=1)
        ax.text(tick, 0.35, str(tick), ha="center", va="bottom", fontsize=8)
    ax.hlines(1.2, 1, 1 + cd, color="black", lw=1.5)
    ax.text(1 + cd / 2, 1.3, f"CD = {cd:.2f} (α = {alpha:g})", ha="center", va="bottom", fontsize=8)
    for i, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        left = i < half
        level = -(i + 1) if left else -(k - i)
        end = 1 - 0.35 * (k - 1) if left else k + 0.35 * (k - 1)
        ax.plot([rank, rank, end], [0, level, level], color="black", lw=0.8, clip_on=False)
        ax.text(
            end,
            level,
            f"{name} ({rank:.2f}) " if left else f" ({rank:.2f}) {name}",
            ha="right" if left else "left",
            va="center",
            fontsize=8,
        )
    for row, (first, last) in enumerate(cliques(ranks, cd)):
        level = -half - 0.6 - 0.4 * row
        ax.hlines(level, ranks[first] - 0.03, ranks[last] + 0.03, color="tab:red", lw=3)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
