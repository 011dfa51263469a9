"""The report section "Across datasets": configurations compared over the datasets of a sweep.

A dataset is the source plus the settings that make it another task, named by `data.task` (a
suite's task name) or else by the source's name, with the differing settings added where one
source gives several tasks. Each dataset is aggregated on its own (per-dataset `Analysis`);
here the configurations that ran on every dataset are set side by side: mean accuracy with its
CI per dataset, mean accuracy, means per group, mean rank, mean z-score, wins, and the Friedman
test with the Nemenyi critical difference and its diagram (`friedman`, `cd_diagram`).

Not a registered section (`tlbench/report/sections.py`), though it reads like one: a section is
`fn(analysis, source, plots)` over one dataset's analysis, reading figures already drawn, and a
report of several datasets renders each section once per dataset. This one reads every dataset's
summary at once, exists only where there are two or more, draws its own figure (the CD diagram,
into the report's folder) and stands once, between the header and the datasets
(`render.render_datasets`). Registering it would take a second kind of section, with another
signature, for this one member; `report/__main__.py` calls it where it splits the runs by dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlbench.report.friedman import friedman_nemenyi, rank_rows, why_no_test
from tlbench.report.markdown import escape, number, plus_minus, table
from tlbench.report.stats import MISSING, _display_rank, column, config_label

TASK, GROUP = "data.task", "data.group"
NOT_TASK_SETTINGS = (
    "data.train_size",
    "data.val_fraction",
    "data.test_fraction",
    "data.split_seed",
    "data.input_size",
    "data.download",
    "data.data_dir",
    "data.on_bad_file",
    "data.check",
    TASK,
    GROUP,
)
"""Data params that change how a dataset is split, sized or read, not which task it is."""


def _given(values: pd.Series) -> pd.Series:
    """True where a param was logged with a value (not absent, not 'null')."""
    return values.notna() & (values != "null") & (values != MISSING)


def dataset_names(runs: pd.DataFrame) -> pd.Series:
    """Each run's dataset: its data.task, else data.name plus the task settings that tell its
    source's datasets apart, e.g. 'shapes (n_classes=4)'; NaN for a run that logged no data."""
    task = column(runs, f"params.{TASK}")
    source = column(runs, "params.data.name")
    settings = [
        c
        for c in runs
        if c.startswith("params.data.")
        and c.removeprefix("params.") not in (*NOT_TASK_SETTINGS, "data.name")
    ]
    names = source.copy()
    for name, members in runs.groupby(source):
        varying = [c for c in settings if members[c].nunique() > 1]
        if varying:
            names[members.index] = (
                name
                + " ("
                + members[varying].apply(
                    lambda row: ", ".join(
                        f"{c.removeprefix('params.data.')}={v}" for c, v in row.items()
                    ),
                    axis=1,
                )
                + ")"
            )
    return task.where(_given(task), names)


def dataset_groups(runs: pd.DataFrame) -> dict[str, str]:
    """Each dataset's group (data.group) where its runs logged one."""
    group = column(runs, f"params.{GROUP}")
    named = pd.DataFrame({"dataset": dataset_names(runs), "group": group})[_given(group)]
    return dict(zip(named["dataset"], named["group"], strict=True))


def split_by_dataset(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The runs of each dataset, datasets ordered by group then name."""
    names = dataset_names(runs)
    groups = dataset_groups(runs)
    order = sorted(names.dropna().unique(), key=lambda name: (groups.get(name, ""), name))
    return {name: runs[names == name] for name in order}


@dataclass(frozen=True)
class Across:
    """Configurations (rows, by label) × datasets (columns) of mean metric and CI half-width,
    restricted to the configurations that ran on every dataset."""

    means: pd.DataFrame
    cis: pd.DataFrame
    left_out: list[str]
    groups: dict[str, str]

    def ranks(self) -> pd.DataFrame:
        """Rank of each configuration on each dataset (1 = best, ties averaged)."""
        return pd.DataFrame(
            rank_rows(self.means.T.to_numpy()).T, index=self.means.index, columns=self.means.columns
        )

    def z_scores(self) -> pd.DataFrame:
        """Per dataset, (mean − mean over configurations) / their standard deviation (ddof=0);
        0 where every configuration scores alike."""
        centred = self.means - self.means.mean(axis=0)
        spread = self.means.std(axis=0, ddof=0).replace(0.0, np.nan)
        return (centred / spread).fillna(0.0)

    def wins(self) -> pd.Series:
        """Datasets on which each configuration has the best mean (each tied best gets one)."""
        return (self.means == self.means.max(axis=0)).sum(axis=1)

    def group_means(self) -> pd.DataFrame:
        """Mean over each group's datasets, per configuration (no columns without groups)."""
        by_group: dict[str, list[str]] = {}
        for dataset in self.means.columns:
            if dataset in self.groups:
                by_group.setdefault(self.groups[dataset], []).append(dataset)
        return pd.DataFrame(
            {group: self.means[names].mean(axis=1) for group, names in by_group.items()},
            index=self.means.index,
        )


def naming_columns(shown_per_dataset: list[list[str]]) -> list[str]:
    """The params that name a configuration across datasets: those naming it on any dataset."""
    union = {name for shown in shown_per_dataset for name in shown}
    return sorted(union, key=_display_rank)


def labels(summary: pd.DataFrame, naming: list[str]) -> pd.Series:
    """Each configuration's name over `naming` (a param its runs did not log shows as –)."""
    summary = summary.assign(**{name: MISSING for name in naming if name not in summary})
    return summary.apply(config_label, axis=1, columns=naming)


def across(summaries: dict[str, pd.DataFrame], naming: list[str], groups: dict[str, str]) -> Across:
    """Set each dataset's per-configuration summary side by side, keeping the configurations
    that ran on every dataset (best mean rank first)."""
    cells = pd.concat(
        [
            pd.DataFrame(
                {
                    "label": labels(summary, naming),
                    "dataset": dataset,
                    "mean": summary["mean"],
                    "ci": summary["ci"],
                }
            )
            for dataset, summary in summaries.items()
        ],
        ignore_index=True,
    )
    means = cells.pivot_table("mean", "label", "dataset", aggfunc="first", sort=False)
    cis = cells.pivot_table("ci", "label", "dataset", aggfunc="first", dropna=False, sort=False)
    datasets = list(summaries)
    means = means.reindex(columns=datasets)
    complete = means.notna().all(axis=1)
    left_out = sorted(means.index[~complete])
    means = means[complete]
    result = Across(means, cis.reindex(index=means.index, columns=datasets), left_out, groups)
    order = result.ranks().mean(axis=1).sort_values(kind="stable").index
    return Across(means.loc[order], result.cis.loc[order], left_out, groups)


def across_section(
    summaries: dict[str, pd.DataFrame],
    naming: list[str],
    groups: dict[str, str],
    metric: str,
    folder: Path,
    stem: str,
    protocols: dict[str, str] | None = None,
) -> str:
    """The markdown section "Across datasets" (and its CD diagram PNG in `folder`, when the
    Friedman test runs) from each dataset's per-configuration summary."""
    unranked = [dataset for dataset, summary in summaries.items() if summary.empty]
    result = across(
        {dataset: summary for dataset, summary in summaries.items() if not summary.empty},
        naming,
        groups,
    )
    lines = [
        "## Across datasets",
        "",
        f"Mean **{escape(metric)}** (95% CI over seeds) of each configuration on each "
        "dataset; datasets are never pooled, only ranks and z-scores are compared across "
        "them. Mean rank: 1 = best on a dataset, ties averaged. Mean z: per dataset, the "
        "score minus the mean over configurations, over their standard deviation. Wins: "
        "datasets on which it has the best mean (each tied best counts one).",
        "",
    ]
    if unranked:
        lines += [
            f"No finished run on {escape(', '.join(unranked))}: compared on the other datasets.",
            "",
        ]
    if result.left_out:
        lines += [
            f"Left out (did not finish on every dataset): {escape('; '.join(result.left_out))}.",
            "",
        ]
    if result.means.empty:
        return "\n".join(
            [*lines, "No configuration finished on every dataset: nothing to compare."]
        )
    lines += [comparison_table(result), ""]
    if protocols:
        lines += [protocol_line(protocols), ""]
    return "\n".join([*lines, *significance(result, folder, stem)])


PROTOCOLS = {
    "tune": "tune (trained on train, val held out for choosing)",
    "final": "final (trained on train+val with the chosen values)",
}


def dataset_protocols(datasets: dict[str, pd.DataFrame]) -> dict[str, str]:
    """The data.protocol of each dataset's runs (tune where not logged), joined when mixed."""
    return {
        name: ", ".join(
            sorted(
                column(runs, "params.data.protocol")
                .where(_given(column(runs, "params.data.protocol")), "tune")
                .unique()
            )
        )
        for name, runs in datasets.items()
    }


def protocol_line(protocols: dict[str, str]) -> str:
    """Which protocol produced the numbers: one for all datasets, or each dataset's."""
    kinds = set(protocols.values())
    if len(kinds) == 1:
        kind = kinds.pop()
        return f"**Protocol:** {escape(PROTOCOLS.get(kind, kind))} on every dataset."
    return (
        "**Protocol per dataset:** "
        + escape(
            "; ".join(
                f"{dataset}: {PROTOCOLS.get(kind, kind)}" for dataset, kind in protocols.items()
            )
        )
        + "."
    )


def comparison_table(result: Across) -> str:
    """Configurations × datasets of mean ± CI, then the summaries across datasets."""
    datasets = list(result.means.columns)
    group_means = result.group_means()
    ranks, z, wins = result.ranks().mean(axis=1), result.z_scores().mean(axis=1), result.wins()
    headers = [
        "configuration",
        *(f"{d} ({result.groups[d]})" if d in result.groups else d for d in datasets),
        "mean",
        *(f"mean {g}" for g in group_means),
        "mean rank",
        "mean z",
        "wins",
    ]
    rows = [
        (
            label,
            *(
                f"{number(result.means.at[label, d], '.3f')} {plus_minus(result.cis.at[label, d])}"
                for d in datasets
            ),
            number(result.means.loc[label].mean(), ".3f"),
            *(number(group_means.at[label, g], ".3f") for g in group_means),
            number(ranks[label], ".2f"),
            number(z[label], "+.2f"),
            int(wins[label]),
        )
        for label in result.means.index
    ]
    return table(headers, rows, "l" + "r" * (len(headers) - 1))


def significance(result: Across, folder: Path, stem: str) -> list[str]:
    """The Friedman test, Iman–Davenport's F and the Nemenyi CD with its diagram, or why not."""
    k, n = result.means.shape[0], result.means.shape[1]
    reason = why_no_test(k, n)
    if reason:
        return [f"**Statistical test:** {escape(reason)}"]
    from tlbench.report.cd_diagram import draw_cd_diagram

    test = friedman_nemenyi(result.ranks().T.to_numpy())
    mean_ranks = dict(zip(result.means.index, test.mean_ranks, strict=True))
    figure = f"{stem}-cd-diagram.png"
    draw_cd_diagram(mean_ranks, test.cd, test.alpha, folder / figure)
    verdict = (
        "the configurations differ"
        if test.f_p < test.alpha
        else "no evidence that the configurations differ"
    )
    return [
        f"**Friedman test** over {k} configurations and {n} datasets (Demšar 2006): "
        f"χ² = {test.chi2:.2f} (p = {test.chi2_p:.3g}); Iman–Davenport F = "
        f"{test.f:.2f} with ({k - 1}, {(k - 1) * (n - 1)}) degrees of freedom "
        f"(p = {test.f_p:.3g}): {verdict} at α = {test.alpha:g}.",
        "",
        f"**Nemenyi critical difference:** CD = q·√(k(k+1)/6N) = {test.q_alpha:.3f}·"
        f"√({k}·{k + 1}/(6·{n})) = {test.cd:.2f}. Two configurations whose mean ranks "
        "differ by at least the CD are significantly different; the diagram joins those "
        "that are not.",
        "",
        f"![Critical-difference diagram]({figure})",
    ]


def scores_across(taus: dict[str, pd.DataFrame], group: list[str]) -> str | None:
    """Each transferability score's (and model size's) Kendall tau per dataset and its mean over
    the datasets, per strategy and size; None when no dataset has score runs."""
    from tlbench.report.stats import BASELINES
    from tlbench.scores import score_names

    frames = [frame.assign(dataset=name) for name, frame in taus.items() if not frame.empty]
    if not frames:
        return None
    both = pd.concat(frames, ignore_index=True)
    datasets = list(dict.fromkeys(both["dataset"]))
    rows = []
    for name in (*score_names(), *BASELINES):
        if f"{name}_tau" not in both or both[f"{name}_tau"].isna().all():
            continue
        for key, members in both.groupby(group, sort=False):
            per = members.set_index("dataset")[f"{name}_tau"].reindex(datasets)
            rows.append(
                (
                    name,
                    *(key if isinstance(key, tuple) else (key,)),
                    *(number(v, "+.2f") for v in per),
                    number(per.mean(), "+.2f"),
                    int(per.notna().sum()),
                )
            )
    headers = ["score", *group, *datasets, "mean tau", "datasets"]
    return "\n".join(
        [
            "### Scores before training, across datasets",
            "",
            "Kendall's tau-b between each score (`python -m tlbench rank`, per dataset: "
            "`data=task1,task2,...`) and the accuracy the backbones reached, per dataset, and its "
            "mean over the datasets that have it (– where a dataset has fewer than 3 scored "
            "backbones). params_total and flops are the model-size baselines a score must beat.",
            "",
            table(headers, rows, "l" * (1 + len(group)) + "r" * (len(datasets) + 2)),
        ]
    )
