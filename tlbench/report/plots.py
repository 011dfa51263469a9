"""Report figures drawn from the configuration summary with matplotlib's Agg backend, as PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tlbench.report.analysis import Analysis
from tlbench.report.stats import (
    # noqa: E402,
    SIZE,
    STRATEGY,
    config_label,
    data_columns,
    ordered_groups,
)
from tlbench.scores import score_names

DPI = 110


def _panels(count: int, max_cols: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure with `count` panels in rows of at most `max_cols`; spare panels are hidden."""
    cols = min(count, max_cols)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for spare in axes[count:]:
        spare.set_visible(False)
    return fig, axes[:count]


def _colors(labels: list[str]) -> dict[str, tuple]:
    """A stable colour per label, from matplotlib's tab10/tab20 cycle."""
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(sorted(labels))}


def _backbone_columns(shown: list[str]) -> list[str]:
    """Shown params that describe the network (backbone.name, and weights when swept)."""
    return [c for c in shown if c.startswith("backbone.")]


def _line_columns(shown: list[str]) -> list[str]:
    """Shown params other than the backbone's and the size: one learning curve per value."""
    return [c for c in shown if not c.startswith("backbone.") and c != SIZE]


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: [0, 1] for accuracies and F1 scores, else unbounded."""
    bounded = metric.endswith(("accuracy", "f1"))
    return (0.0, 1.0) if bounded else (-math.inf, math.inf)


def clipped_errors(means: np.ndarray, ci: np.ndarray, metric: str) -> np.ndarray:
    """Lower and upper error-bar lengths of mean ± ci, cut at the metric's range (with 2 seeds,
    t = 12.7 sends an accuracy's interval past 1.0); the report's tables keep the full ci."""
    low, high = metric_range(metric)
    ci = np.nan_to_num(ci)
    return np.vstack([means - np.maximum(means - ci, low), np.minimum(means + ci, high) - means])


def learning_curves(analysis: Analysis, metric: str, path: Path) -> None:
    """Mean metric vs mean n_train (log x), a panel per backbone and a line per strategy, with
    95% CI error bars (none for single-seed points), bars and axis within the metric's range."""
    summary, shown = analysis.summary, analysis.shown
    lines = _line_columns(shown)
    labelled = summary.assign(line=summary.apply(config_label, axis=1, columns=lines))
    colors = _colors(labelled["line"].unique().tolist())
    panels = list(labelled.groupby(_backbone_columns(shown)))
    fig, axes = _panels(len(panels), 3, (4.4, 3.4))
    for ax, (key, panel) in zip(axes, panels, strict=True):
        for line, points in panel.groupby("line"):
            points = points.sort_values("n_train")
            means = points["mean"].to_numpy(float)
            ax.errorbar(points["n_train"], means,
                        yerr=clipped_errors(means, points["ci"].to_numpy(float), metric),
                        marker="o", capsize=3, color=colors[line], label=line)
        bottom, top = ax.get_ylim()
        low, high = metric_range(metric)
        ax.set_ylim(max(bottom, low), min(top, high))
        ax.set(xscale="log", title=" · ".join(key), xlabel="training images (mean n_train)",
               ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)


def accuracy_vs_time(analysis: Analysis, metric: str, path: Path) -> None:
    """Each configuration's mean metric against its mean fit time (log x), coloured by strategy,
    with the Pareto front drawn as a step line, its points numbered as in the report's table."""
    summary, front = analysis.summary, analysis.time_front
    fig, (ax,) = _panels(1, 1, (7.5, 5.0))
    colors = _colors(summary[STRATEGY].unique().tolist())
    for strategy, points in summary.groupby(STRATEGY):
        ax.scatter(points["fit_seconds"], points["mean"], color=colors[strategy], alpha=0.75,
                   label=strategy)
    ax.step(front["fit_seconds"], front["mean"], where="post", color="black", linewidth=1,
            label="Pareto front")
    for number, (_, row) in enumerate(front.iterrows(), start=1):
        ax.annotate(str(number), (row["fit_seconds"], row["mean"]), fontsize=8,
                    xytext=(3, -11), textcoords="offset points")
    ax.set(xscale="log", xlabel="mean fit time (s, log scale)", ylabel=metric,
           title=f"{metric} vs training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)


def heatmaps(analysis: Analysis, metric: str, path: Path) -> None:
    """Mean metric as backbone × strategy heatmaps, one panel per training-set size."""
    summary, shown = analysis.summary, analysis.shown
    by = data_columns(shown)
    rows = [c for c in shown if not c.startswith(("strategy.", "data."))]
    cols = [c for c in shown if c.startswith("strategy.")]
    labelled = summary.assign(row=summary.apply(config_label, axis=1, columns=rows),
                              col=summary.apply(config_label, axis=1, columns=cols))
    row_labels, col_labels = sorted(labelled["row"].unique()), sorted(labelled["col"].unique())
    low, high = labelled["mean"].min(), labelled["mean"].max()
    groups = ordered_groups(labelled, by)
    fig, axes = _panels(len(groups), 4, (1.0 + 1.1 * len(col_labels), 1.0 + 0.5 * len(row_labels)))
    for ax, (key, group) in zip(axes, groups, strict=True):
        table = group.pivot_table(index="row", columns="col", values="mean", aggfunc="max")
        table = table.reindex(index=row_labels, columns=col_labels)
        image = ax.imshow(table.to_numpy(), vmin=low, vmax=high, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(table.to_numpy()):
            if not np.isnan(value):
                dark = value < (low + high) / 2
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
        ax.set_yticks(range(len(row_labels)), row_labels)
        ax.set_title(f"{' · '.join(key)} (n_train ≈ {group['n_train'].mean():.0f})")
    fig.colorbar(image, ax=axes, label=metric, shrink=0.8)
    fig.savefig(path, dpi=DPI)


def scores_vs_accuracy(analysis: Analysis, metric: str, path: Path) -> None:
    """Each score against the mean metric, one point per backbone: a row of panels per strategy
    and size, a column per score that any backbone has; tau in each panel's title."""
    agreement = analysis.scores
    points, group, candidate = agreement.points, agreement.group, agreement.candidate
    names = [s for s in score_names() if points[s].notna().any()]
    groups = ordered_groups(points, group)
    taus = agreement.taus.set_index(group) if group else agreement.taus
    fig = Figure(figsize=(3.6 * len(names), 3.0 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(names), squeeze=False)
    for row, (key, members) in zip(axes, groups, strict=True):
        facts = taus.loc[key if len(key) > 1 else key[0]]
        for ax, name in zip(row, names, strict=True):
            have = members[members[name].notna()]
            ax.scatter(have[name], have["mean"], color="tab:blue")
            for _, point in have.iterrows():
                ax.annotate(config_label(point, candidate), (point[name], point["mean"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
            tau = facts[f"{name}_tau"]
            verdict = "tau n/a" if np.isnan(tau) else f"tau={tau:+.2f}"
            ax.set(title=f"{' · '.join(map(str, key))}: {verdict}", xlabel=name, ylabel=metric)
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3)
    fig.savefig(path, dpi=DPI)


FIGURES = {"learning-curves": learning_curves, "heatmaps": heatmaps,
           "accuracy-vs-time": accuracy_vs_time}


def draw_all(analysis: Analysis, metric: str, folder: Path, stem: str) -> dict[str, str]:
    """Draw every figure into `folder` as '<stem>-<figure>.png'; returns figure -> file name.
    The scores figure only when score runs match the sweep."""
    figures = dict(FIGURES)
    if analysis.scores is not None and not analysis.scores.points.empty:
        figures["scores-vs-accuracy"] = scores_vs_accuracy
    names = {figure: f"{stem}-{figure}.png" for figure in figures}
    for figure, draw in figures.items():
        draw(analysis, metric, folder / names[figure])
    return names
