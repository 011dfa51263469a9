"""Markdown rendering of an `Analysis`. Every value that comes from a run is escaped, so names
with `|`, newlines, backticks or HTML cannot break a table or inject markup."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tlbench.report.analysis import Analysis, Source
from tlbench.report.markdown import (
    _missing,
    escape,
    fence,
    interval,
    number,
    plus_minus,
    table,
    timestamp,
)
from tlbench.report.sections import BODY_ORDERS, rendered_sections, section
from tlbench.report.stats import (
    SELECTION_METRIC,
    SPLITS,
    STRATEGY,
    config_label,
    data_columns,
    distinct_tag,
    grid,
    status_counts,
    unfinished_runs,
    untuned_hyperparameters,
)
from tlbench.tracking.store import redact

GRID_VALUES_SHOWN = 24
REPRODUCED = 3
Plots = dict[str, str]
VERSION_TAGS = (("tlbench", "tlbench_version"), ("git commit", "git_commit"),
                ("Keras", "keras_version"), ("TensorFlow", "tensorflow_version"),
                ("JAX", "jax_version"), ("PyTorch", "torch_version"), ("MLflow", "mlflow_version"))


def rerun_command(command: str, seeds: Sequence[str]) -> str:
    """`command` (space-separated, as tagged by the harness) with its seed override replaced
    by every seed used, as a Hydra multirun (-m) when there are several."""
    words = [w for w in command.split() if not w.startswith("seed=")]
    words.append(f"seed={','.join(seeds)}")
    if len(seeds) > 1 and not _is_multirun(words):
        first_override = next(i for i, w in enumerate(words) if "=" in w and not w.startswith("-"))
        words.insert(first_override, "-m")
    return " ".join(words)


def _is_multirun(words: list[str]) -> bool:
    """True if the command has Hydra's -m/--multirun (not python's `-m tlbench`)."""
    following = [*words[1:], ""]
    return "--multirun" in words or any(word == "-m" and not after.startswith("tlbench")
                                        for word, after in zip(words, following, strict=True))


def render_markdown(analysis: Analysis, source: Source, plots: dict[str, str]) -> str:
    """The whole report: every registered section in order (tlbench/report/sections.py);
    `plots` maps a figure's key to its path relative to the report."""
    return "\n\n".join(rendered_sections(analysis, source, plots)) + "\n"


def render_datasets(whole: Analysis, datasets: dict[str, tuple[Analysis, dict[str, str]]],
                    source: Source, across: str) -> str:
    """The report of a sweep over several datasets: the header, the section across datasets,
    then each dataset's own sections (its analysis and figures), never mixing tasks."""
    sections = [header(whole, source, {}), across]
    for name, (analysis, plots) in datasets.items():
        sections.append(f"## Dataset {escape(name)}")
        sections += [demoted(section)
                     for section in rendered_sections(analysis, source, plots, BODY_ORDERS)]
    sections.append(failures(whole, source, {}))
    return "\n\n".join(section for section in sections if section) + "\n"


def demoted(section: str) -> str:
    """A section with each markdown heading one level deeper (## becomes ###)."""
    return "\n".join(f"#{line}" if line.startswith("#") else line
                     for line in section.split("\n"))


@section("header", 10, needs_results=False)
def header(analysis: Analysis, source: Source, plots: Plots) -> str:
    """Title, what was ranked, run counts and dates, environment, and the swept grid."""
    runs = analysis.runs
    counts = status_counts(runs)
    finished, failed = counts.get("FINISHED", 0), counts.get("FAILED", 0)
    other = len(runs) - finished - failed
    versions = " · ".join(f"{name} {escape(', '.join(distinct_tag(runs, tag)))}"
                          for name, tag in VERSION_TAGS if distinct_tag(runs, tag))
    accelerators = distinct_tag(runs, "accelerator") or distinct_tag(runs, "device")
    lines = [
        f"# tlbench report: {escape(source.experiment)}, sweep {escape(source.sweep_id)}",
        "",
        f"Configurations ranked by mean **{escape(source.metric)}** over seeds (higher is "
        "better), with 95% Student-t confidence intervals.",
        "",
        f"- **Splits:** {splits_line(source.metric)}",
        f"- **Tuned:** {tuned_line(analysis.tuned)}",
        f"- **Tracking store:** {escape(redact(source.tracking_uri))}",
        f"- **Runs:** {len(runs)}: {finished} finished, {failed} failed, {other} other "
        "(killed or still running)",
        f"- **Started:** {timestamp(runs['start_time'].min())} to "
        f"{timestamp(runs['start_time'].max())}",
        f"- **Accelerator:** {escape(', '.join(accelerators) or '–')}",
        f"- **Keras backend:** {escape(', '.join(distinct_tag(runs, 'keras_backend')) or '–')}"
        f" · **precision:** {escape(', '.join(distinct_tag(runs, 'precision')) or '–')}",
        f"- **Classes:** {escape(' | '.join(distinct_tag(runs, 'class_names')) or '–')}",
        f"- **Versions:** {versions}",
    ]
    if source.filter:
        lines.append(f"- **Filter:** {escape(source.filter)}")
    rows = [(name, len(values), _abridged(values))
            for name, values in grid(runs, [*analysis.shown, *analysis.tuned]).items()]
    lines += ["", "### Grid", "", table(["param", "values", "distinct values"], rows, "lrl")]
    return "\n".join(lines)


def splits_line(metric: str) -> str:
    """Which split each metric comes from, the ranked one first, and that test picks nothing."""
    ranked = SPLITS.get(metric, "as logged by the runs")
    others = "; ".join(f"{escape(name)}: {split}" for name, split in SPLITS.items()
                       if name != metric)
    return (f"ranked {escape(metric)}: {ranked}; {others}. Nothing is selected on test: a "
            "ranking of fixed configurations by a test metric is a comparison, and "
            "hyperparameters are chosen on validation only (`--tune`).")


def tuned_line(tuned: Sequence[str]) -> str:
    """What --tune chose, and on which metric, or that nothing was tuned."""
    if not tuned:
        return "nothing (`--tune KEY,...` chooses hyperparameters on validation)"
    return (f"{escape(', '.join(tuned))}, per configuration, by the best mean "
            f"{escape(SELECTION_METRIC)} over seeds (validation split); only the chosen "
            "values' runs are ranked")


def _abridged(values: list[str]) -> str:
    """Comma-separated values, the tail beyond GRID_VALUES_SHOWN summarised as a count."""
    shown = ", ".join(values[:GRID_VALUES_SHOWN])
    hidden = len(values) - GRID_VALUES_SHOWN
    return f"{shown}, … (+{hidden})" if hidden > 0 else shown


def ranking_verdict(summary: pd.DataFrame, shown: list[str]) -> str:
    """One sentence saying whether the leader is clearly ahead, tied, or unreplicated."""
    leader = config_label(summary.iloc[0], shown)
    tied = int((summary["verdict"] == "tied").sum())
    single = int((summary["n"] < 2).sum())
    if summary.iloc[0]["n"] < 2:
        return (f"**Unreplicated ranking:** the leader ({escape(leader)}) has a single seed, so "
                "no confidence interval exists; run more seeds before trusting this order.")
    if tied:
        verdict = (f"**No clear winner:** {tied} other configuration(s) have a 95% CI that "
                   f"overlaps the leader's ({escape(leader)}); they are marked *tied* and "
                   "the data cannot tell them apart.")
    else:
        verdict = (f"**Clear leader:** {escape(leader)}; its 95% CI overlaps no other "
                   "replicated configuration's.")
    if single:
        verdict += f" {single} configuration(s) have a single seed (*unreplicated*)."
    return verdict


@section("nothing_to_rank", 15, needs_results=False)
def nothing_to_rank(analysis: Analysis, source: Source, plots: Plots) -> str | None:
    """Why there is no ranking, when no finished run logged the metric."""
    if not analysis.summary.empty:
        return None
    return f"No finished run logged **{escape(source.metric)}**: nothing to rank."


@section("ranking", 30)
def ranking(analysis: Analysis, source: Source, plots: Plots) -> str:
    """The ranked configuration table with seed statistics, costs and tie verdicts."""
    summary, shown, tuned = analysis.summary, analysis.shown, list(analysis.tuned)
    ranked = summary.head(source.top) if source.top else summary
    headers = ["rank", *shown, *chosen_headers(tuned), "n", "mean", "std", "95% CI", "fit s",
               "trainable params", "total params", "GMACs", "forward img/s",
               "metric per fit s", "vs leader"]
    rows = [(row["rank"], *(row[c] for c in [*shown, *tuned]), row["n"],
             number(row["mean"], ".3f"),
             number(row["std"], ".3f"), plus_minus(row["ci"]), number(row["fit_seconds"], ".1f"),
             number(row["params_trainable"], ",.0f"), number(row["params_total"], ",.0f"),
             number(row["flops"] / 1e9, ".3g"), number(row["forward_images_per_second"], ",.0f"),
             number(row["per_second"], ".3g"), row["verdict"])
            for _, row in ranked.iterrows()]
    lines = [f"## Ranking by {escape(source.metric)}", "", ranking_verdict(summary, shown), ""]
    untuned = untuned_hyperparameters(shown)
    if untuned:
        names = escape(", ".join(untuned))
        lines += [f"Swept and not tuned: {names}. Each value is a configuration of its own, "
                  f"compared on {escape(source.metric)}; to choose on validation instead, "
                  f"report with --tune {escape(','.join(untuned))}.", ""]
    if len(ranked) < len(summary):
        lines += [f"Top {len(ranked)} of {len(summary)} configurations (`--top`).", ""]
    lines.append(table(headers, rows, "r" + "l" * (len(shown) + len(tuned)) + "r" * 10 + "l"))
    return "\n".join(lines)


def chosen_headers(tuned: Sequence[str]) -> list[str]:
    """Column titles for the values --tune chose on validation."""
    return [f"{key} (chosen on val)" for key in tuned]


@section("tuning", 20)
def tuning(analysis: Analysis, source: Source, plots: Plots) -> str | None:
    """Every tuned candidate's mean val_accuracy per configuration, the chosen one starred
    (None without --tune)."""
    if not analysis.tuned:
        return None
    choices, shown, tuned = analysis.choices, analysis.shown, list(analysis.tuned)
    rows, unchosen = [], 0
    for key, candidates in choices.groupby(shown, sort=False):
        cells = " · ".join(
            f"{', '.join(map(str, c[tuned]))}: {number(c['val_mean'], '.3f')} ({c['val_n']})"
            + (" ★" if c["chosen"] else "") for _, c in candidates.iterrows())
        chosen = candidates[candidates["chosen"]]
        unchosen += chosen.empty
        picked = "none (no val_accuracy)" if chosen.empty else ", ".join(
            map(str, chosen.iloc[0][tuned]))
        rows.append((*key, picked, cells))
    metric = escape(SELECTION_METRIC)
    lines = ["## Tuned on validation", "",
             f"{escape(', '.join(tuned))} chosen per configuration by the best mean {metric} "
             "over seeds (ties: the first value); the test metric plays no part. Candidates: "
             f"value: mean {metric} (seeds), ★ = chosen.", ""]
    if unchosen:
        lines += [f"{unchosen} configuration(s) logged no {metric}: left out of the ranking.",
                  ""]
    lines.append(table([*shown, *chosen_headers(tuned), "candidates"], rows,
                       "l" * len(shown) + "ll"))
    return "\n".join(lines)


def winning_strategies(winners: pd.DataFrame, size_columns: list[str]) -> str:
    """'**a** at 10 (tied), 50; **b** at all': which strategy wins at which sizes, flagging
    wins that are statistical ties or rest on a single seed."""
    wins: dict[str, list[str]] = {}
    for _, row in winners.iterrows():
        caveat = " (unreplicated)" if row["n"] < 2 else " (tied)" if row["tied_with"] else ""
        wins.setdefault(row[STRATEGY], []).append(config_label(row, size_columns) + caveat)
    return "; ".join(f"**{escape(strategy)}** at {escape(', '.join(sizes))}"
                     for strategy, sizes in wins.items())


@section("per_size", 40)
def per_size(analysis: Analysis, source: Source, plots: Plots) -> str:
    """Winner at each training-set size, best mean per strategy, learning curves and heatmaps."""
    by = data_columns(analysis.shown)
    rest = [c for c in analysis.shown if c not in by]
    winners = analysis.winners
    label = [*rest, *analysis.tuned]
    rows = [(*(row[c] for c in by), number(row["n_train"], ".0f"), config_label(row, label),
             row["n"], number(row["mean"], ".3f"), plus_minus(row["ci"]),
             "unreplicated" if row["n"] < 2 else "; ".join(row["tied_with"]) or "none")
            for _, row in winners.iterrows()]
    strategies = [c for c in analysis.by_strategy if c not in by]
    best = [(*(row[c] for c in by), *(_starred(row[s], row[strategies].max()) for s in strategies))
            for _, row in analysis.by_strategy.iterrows()]
    return "\n".join([
        "## Winner per training-set size", "",
        f"Sizes ordered by mean n_train. Winning strategy: "
        f"{winning_strategies(winners, by)}.", "",
        table([*by, "n_train", "winner", "n", "mean", "95% CI", "tied with"], rows,
              "l" * len(by) + "rlrrrl"),
        "", f"Best mean {escape(source.metric)} per strategy at each size (★ = best):", "",
        table([*by, *strategies], best, "l" * len(by) + "r" * len(strategies)),
        "", f"![Learning curves]({plots['learning-curves']})",
        "", f"![Heatmaps per size]({plots['heatmaps']})",
    ])


def _starred(value: float, best: float) -> str:
    """A mean to 3 decimals, starred when it is the row's best."""
    return number(value, ".3f") + (" ★" if value == best else "")


@section("versus_scratch", 50)
def versus_scratch(analysis: Analysis, source: Source, plots: Plots) -> str:
    """Gain of each strategy over the from-scratch control per backbone and size."""
    gains = analysis.gains
    title = "## Transfer vs training from scratch"
    if gains.empty:
        return (f"{title}\n\nNo finished scratch run shares a backbone and size with a "
                "transfer configuration: no gains to report.")
    cell = [c for c in analysis.shown if not c.startswith("strategy.") and c != "backbone.weights"]
    strategy = [c for c in analysis.shown if c not in cell]
    rows = [(*(row[c] for c in cell), config_label(row, strategy), number(row["mean"], ".3f"),
             number(row["scratch_mean"], ".3f"), number(row["gain"], "+.3f"),
             interval(row["gain"], row["gain_ci"]), row["gain_verdict"],
             f"{row['n']} / {row['scratch_n']}")
            for _, row in gains.iterrows()]
    return "\n".join([
        title, "",
        f"Gain = mean {escape(source.metric)} of the configuration minus the mean of the scratch "
        "runs with the same backbone and data, with a Welch 95% CI. *better*/*worse* when the "
        "CI excludes zero.", "",
        table([*cell, "strategy", "mean", "scratch mean", "gain", "95% CI", "verdict",
               "n / scratch n"], rows, "l" * len(cell) + "lrrrrlr"),
    ])


@section("pareto", 60)
def pareto(analysis: Analysis, source: Source, plots: Plots) -> str:
    """The configurations no other beats on both the metric and a cost, with the scatter plot."""
    metric, shown = escape(source.metric), analysis.shown
    sections = ["## Pareto fronts", "",
                f"Configurations that no other configuration beats on both {metric} (higher) "
                "and the cost (lower), cheapest first; the plot numbers the fit-time front."]
    for title, front, cost, spec in (("fit time", analysis.time_front, "fit_seconds", ".1f"),
                                     ("trainable params", analysis.params_front,
                                      "params_trainable", ",.0f"),
                                     ("multiply-adds", analysis.flops_front, "flops", ",.0f")):
        if front.empty:
            continue
        rows = [(i, config_label(row, shown), number(row["mean"], ".3f"), number(row[cost], spec))
                for i, (_, row) in enumerate(front.iterrows(), start=1)]
        sections += ["", f"### {metric} vs {title}", "",
                     table(["#", "configuration", "mean", f"mean {title}"], rows, "rlrr")]
    sections += ["", f"![{metric} vs fit time]({plots['accuracy-vs-time']})"]
    return "\n".join(sections)


@section("reproduce", 80)
def reproduce(analysis: Analysis, source: Source, plots: Plots) -> str:
    """Commands that rerun the top configurations with all their seeds."""
    sections = ["## Reproduce the top configurations"]
    for _, row in analysis.summary.head(REPRODUCED).iterrows():
        label = escape(config_label(row, analysis.shown))
        sections += ["", f"{row['rank']}. {label} (seeds {escape(', '.join(row['seeds']))}):", ""]
        command = row["command"]
        sections.append("No `command` tag on its runs." if _missing(command)
                        else fence(rerun_command(command, row["seeds"])))
    return "\n".join(sections)


@section("failures", 90, needs_results=False)
def failures(analysis: Analysis, source: Source, plots: Plots) -> str:
    """Runs that did not finish, with their error tag."""
    unfinished = unfinished_runs(analysis.runs)
    title = "## Runs that did not finish"
    if unfinished.empty:
        return f"{title}\n\nNone: all {len(analysis.runs)} runs finished."
    rows = unfinished.itertuples(index=False)
    return (f"{title}\n\n*finished on rerun*: a later run of the same config and seed "
            "finished, so the failure no longer leaves a hole in the results.\n\n"
            + table(["run", "status", "error", "finished on rerun"], rows, "llll"))
