"""The report's section on transferability scores: each score beside the accuracy it predicts,
Kendall's tau per strategy and size, and the model-size baselines a score must beat."""

from __future__ import annotations

from tlbench.report.analysis import Analysis, Source
from tlbench.report.markdown import (
    _missing,
    escape,
    number,
    table,
)
from tlbench.report.sections import section
from tlbench.report.stats import (
    BASELINES,
    MIN_TAU_POINTS,
    SCORES_VERSION_TAG,
    ordered_groups,
)
from tlbench.scores import SCORES_VERSION, score_names

BASELINE_TITLES = {"params_total": "params", "flops": "FLOPs"}


def tau_cell(tau: float, p: float, k: int, backbones: int) -> str:
    """Kendall's tau with its p-value (and over how many backbones, when not all have the
    score), or why there is none."""
    if k < MIN_TAU_POINTS:
        return f"not meaningful ({k} backbone{'s' * (k != 1)})"
    if _missing(tau):
        return "undefined (constant)"
    subset = f", {k} of {backbones}" if k < backbones else ""
    return f"{tau:+.2f} (p={p:.2f}{subset})"


@section("scores_vs_accuracy", 70)
def scores_vs_accuracy(analysis: Analysis, source: Source, plots: dict[str, str]) -> str | None:
    """Each transferability score beside the accuracy reached, Kendall's tau per strategy and
    size, and the scatter plot (None when the experiment was not searched for score runs)."""
    if analysis.scores is None:
        return None
    agreement, metric = analysis.scores, escape(source.metric)
    title = "## Scores before training vs accuracy after"
    versions = version_line(agreement.other_version)
    if agreement.points.empty:
        found = (f"{agreement.found} score run(s) in the experiment, but none has this sweep's "
                 "backbone, weights, data, size and seed" if agreement.found else
                 "No score runs (tag tlbench.kind=score) of the current scores version in the "
                 "experiment")
        return (f"{title}\n\n{found}. Score the sweep's backbones with the same data, sizes and "
                "seeds: `python -m tlbench rank backbone=a,b,c data.train_size=... seed=...`."
                f"\n\n{versions}")
    group, candidate = agreement.group, agreement.candidate
    baselines = [b for b in BASELINES if agreement.points[b].notna().any()]
    compared = [*score_names(), *baselines]
    titles = [*score_names(), *(BASELINE_TITLES[b] for b in baselines)]
    taus = [(*(row[c] for c in group), row["backbones"],
             *(tau_cell(row[f"{s}_tau"], row[f"{s}_p"], row[f"{s}_k"], row["backbones"])
               for s in compared))
            for _, row in agreement.taus.iterrows()]
    sections = [
        title, "",
        f"Scores of the frozen backbones (`python -m tlbench rank`, no training; mean over the "
        f"seeds the sweep also trained) beside the mean {metric} each configuration reached. "
        f"Kendall's tau-b between score and {metric} over the backbones: +1 means the score "
        "ordered them exactly as training did, 0 no better than chance; with fewer than "
        f"{MIN_TAU_POINTS} backbones it is not meaningful. Joined on backbone, weights, "
        "pretrain settings, data, training-set size and seed; scratch runs are left out (they do "
        "not start from the scored weights).", "",
        f"Baseline: the tau of the backbone's size alone ({', '.join(titles[len(score_names()):])}"
        ", bigger ranked higher). A score that does not beat it tells you no more than model "
        "size does.", "",
        versions, "",
        table([*group, "backbones", *(f"{t} tau" for t in titles)], taus,
              "l" * len(group) + "r" + "r" * len(compared)),
    ]
    for key, members in ordered_groups(agreement.points, group):
        members = members.sort_values("mean", ascending=False, kind="stable")
        rows = [(*(row[c] for c in candidate), row["n"], number(row["mean"], ".3f"),
                 row["score_n"], *(number(row[s], ".3f") for s in score_names()),
                 *(number(row[b], ",.0f") for b in baselines))
                for _, row in members.iterrows()]
        sections += ["", f"### {escape(' · '.join(map(str, key)))}", "",
                     table([*candidate, "n", f"mean {source.metric}", "seeds scored",
                            *titles], rows,
                           "l" * len(candidate) + "rrr" + "r" * len(compared))]
    sections += ["", "– = not available (LEEP and NCE need the source model's classifier: "
                     "`backbone.weights=source:<name>` only).",
                 "", f"![Scores vs {metric}]({plots['scores-vs-accuracy']})"]
    return "\n".join(sections)


def version_line(other_version: int) -> str:
    """One line: only score runs of the current scores version are joined, and how many not."""
    return (f"Score runs of scores version {SCORES_VERSION} only (tag "
            f"{escape(SCORES_VERSION_TAG)}; untagged runs are version 1): {other_version} score "
            "run(s) of another version left out, their scores are not comparable.")
