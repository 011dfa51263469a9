"""Pure aggregation of a sweep's runs: hyperparameters tuned on validation, per-configuration seed
statistics, ties with the leader, winners per training-set size, gains over the from-scratch
control and Pareto fronts (`agreement` relates transferability scores to them, `analysis`
assembles everything the report shows).

Input is the run table of `fetch.fetch_runs` (columns `status`, `params.*`, `metrics.*`, `tags.*`);
everything here is plain pandas/numpy, with no MLflow and no rendering.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from tlbench.errors import TlbenchError

FINISHED = "FINISHED"
SCRATCH = "scratch"
MISSING = "–"
BACKBONE, STRATEGY, SIZE = "backbone.name", "strategy.name", "data.train_size"
ALWAYS_SHOWN = (BACKBONE, STRATEGY, SIZE)
COSTS = ("fit_seconds", "params_trainable", "params_total", "n_train", "flops",
         "forward_images_per_second")
SELECTION_METRIC = "val_accuracy"  # the only metric anything is chosen on; never a test metric
RUN_FIELDS = ("seed", "value", "selection", *COSTS, "command")
KIND_TAG, SCORE_KIND, SWEEP_KIND = "tlbench.kind", "score", "sweep"
BASELINES = ("params_total", "flops")  # model size: the guess a transferability score must beat
SCORES_VERSION_TAG = "scores.version"  # absent on runs scored before the tag: version 1
SPLITS = {"test_accuracy": "test", "test_macro_f1": "test",
          "val_accuracy": "validation (used only by --tune and early stopping)",
          "train_accuracy": "the train subset"}
CANDIDATE_FAMILIES = ("backbone.", "pretrain.")  # params that fix a frozen base's weights
MIN_TAU_POINTS = 3


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """`frame[name]`, or all-NaN when no run logged it."""
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index, dtype=object)


def trained_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that trained a model: score runs and sweeps' parent runs (tag tlbench.kind=score,
    sweep) left out."""
    return runs[~column(runs, f"tags.{KIND_TAG}").isin((SCORE_KIND, SWEEP_KIND))]


def tidy_runs(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished runs that logged `metric`: one column per param (seed apart), `value`, costs."""
    runs = trained_runs(runs)
    missing = [name for name in ALWAYS_SHOWN if f"params.{name}" not in runs]
    if missing:
        raise TlbenchError(f"runs lack param(s) {', '.join(missing)}: not tlbench runs?")
    if f"metrics.{metric}" not in runs:
        if not (runs["status"] == FINISHED).any():  # nothing to rank; the report lists them
            runs = runs.assign(**{f"metrics.{metric}": np.nan})
        else:
            logged = sorted(c.removeprefix("metrics.") for c in runs if c.startswith("metrics."))
            raise TlbenchError(f"no run logged metric {metric!r}; logged: {', '.join(logged)}")
    done = latest_per_config(runs[(runs["status"] == FINISHED) & runs[f"metrics.{metric}"].notna()])
    params = [c for c in runs if c.startswith("params.") and c != "params.seed"]
    tidy = pd.DataFrame({c.removeprefix("params."): done[c].fillna(MISSING) for c in params})
    tidy["seed"] = column(done, "params.seed").fillna(MISSING)
    tidy["value"] = done[f"metrics.{metric}"].astype(float)
    tidy["selection"] = column(done, f"metrics.{SELECTION_METRIC}").astype(float)
    for cost in COSTS:
        tidy[cost] = column(done, f"metrics.{cost}").astype(float)
    # A run on cached frozen outputs also pays for them: the rows it used times their measured
    # cost per row (feature_cost_seconds), whichever run filled the cache; feature_seconds for
    # runs logged before that metric.
    cost = column(done, "metrics.feature_cost_seconds").astype(float)
    tidy["fit_seconds"] += cost.fillna(column(done, "metrics.feature_seconds").astype(float))\
        .fillna(0.0)
    tidy["command"] = column(done, "tags.command")
    return tidy.reset_index(drop=True)


def latest_per_config(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest run per config_hash tag (config and seed): a rerun replaces, not replicates."""
    key = column(runs, "tags.config_hash").fillna(runs["run_id"])
    return runs.assign(_key=key).sort_values("start_time", kind="stable").drop_duplicates(
        "_key", keep="last").drop(columns="_key")


def config_columns(tidy: pd.DataFrame) -> list[str]:
    """The params that identify a configuration: every logged param except the seed."""
    return [c for c in tidy.columns if c not in RUN_FIELDS]


def _display_rank(name: str) -> tuple[int, bool, bool, str]:
    """Sort key: backbone, strategy, data params (each family's main one first, size last)."""
    families = ("backbone", "strategy", "data")
    family = name.split(".")[0]
    order = families.index(family) if family in families else len(families)
    return (order, name == SIZE, name not in (BACKBONE, STRATEGY), name)


def shown_columns(tidy: pd.DataFrame, tuned: Sequence[str] = ()) -> list[str]:
    """Params that name a configuration: backbone, strategy, size, and any other param that
    varies among runs sharing those three (e.g. backbone.weights or data.name when swept), the
    `tuned` ones aside (they are chosen per configuration, not part of its name)."""
    others = [c for c in config_columns(tidy) if c not in (*ALWAYS_SHOWN, *tuned)]
    distinct = tidy.groupby(list(ALWAYS_SHOWN))[others].nunique().max()
    varying = [c for c in others if distinct[c] > 1]
    return sorted([*ALWAYS_SHOWN, *varying], key=_display_rank)


def untuned_hyperparameters(shown: list[str]) -> list[str]:
    """Shown training settings (trainer.*, strategy.* but its name, head.*): swept, so the
    best-of tables pick them on the ranked metric unless `--tune` picks them on validation."""
    return [c for c in shown if c.startswith(("trainer.", "strategy.", "head."))
            and c != STRATEGY]


def check_tunable(tidy: pd.DataFrame, tuned: Sequence[str]) -> None:
    """Refuse a --tune key that is the seed, a compared axis, or not a param of the runs."""
    params = config_columns(tidy)
    for key in tuned:
        if key == "seed":
            raise TlbenchError("--tune seed: seeds are replicates, averaged over, never tuned")
        if key in ALWAYS_SHOWN:
            raise TlbenchError(f"--tune {key}: {', '.join(ALWAYS_SHOWN)} are what the report "
                               "compares, not hyperparameters; tune e.g. trainer.lr")
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            varying = [c for c in params if tidy[c].nunique() > 1 and c not in ALWAYS_SHOWN]
            hint = (f"did you mean {close[0]}?" if close else
                    f"params swept here: {', '.join(varying) or 'none but the compared axes'}")
            raise TlbenchError(f"--tune {key}: not a param of the sweep's runs; {hint}")


def tune_on_validation(tidy: pd.DataFrame,
                       tuned: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per configuration (all other params), the `tuned` values with the best mean val_accuracy
    over seeds (ties: the first in natural order). Returns the chosen values' runs and every
    candidate with `val_n`, `val_mean` and `chosen`; a configuration whose candidates logged no
    val_accuracy has none chosen and leaves no runs."""
    tuned = list(tuned)
    cell = [c for c in config_columns(tidy) if c not in tuned]
    candidates = tidy.groupby([*cell, *tuned]).agg(
        val_n=("selection", "count"), val_mean=("selection", "mean")).reset_index()
    candidates = candidates.sort_values(
        [*cell, *tuned], key=lambda values: values.map(natural_key), kind="stable",
        ignore_index=True)
    eligible = candidates[candidates["val_mean"].notna()]
    best = eligible.groupby(cell, sort=False)["val_mean"].idxmax()
    candidates["chosen"] = candidates.index.isin(best.to_numpy())
    chosen = candidates.loc[candidates["chosen"], [*cell, *tuned]]
    return tidy.merge(chosen, on=[*cell, *tuned], how="inner"), candidates


def data_columns(shown: list[str]) -> list[str]:
    """The shown params that describe the training data (the size, and data.name when swept)."""
    return [c for c in shown if c.startswith("data.")]


def config_label(row: pd.Series, columns: list[str]) -> str:
    """A configuration's short name, e.g. 'resnet50 · feature_extraction · 10'."""
    return " · ".join(str(row[c]) for c in columns)


def ci_half_width(std: ArrayLike, n: ArrayLike) -> np.ndarray:
    """Half-width of the 95% Student-t CI of a mean, t(0.975, n-1)·std/√n; NaN for n < 2."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return scipy_stats.t.ppf(0.975, n - 1) * np.asarray(std, dtype=float) / np.sqrt(n)


def welch_half_width(std1: ArrayLike, n1: ArrayLike, std2: ArrayLike,
                     n2: ArrayLike) -> np.ndarray:
    """Half-width of the Welch 95% CI of mean1 − mean2; NaN when either side has n < 2."""
    v1 = np.asarray(std1, dtype=float) ** 2 / np.asarray(n1, dtype=float)
    v2 = np.asarray(std2, dtype=float) ** 2 / np.asarray(n2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = (v1 + v2) ** 2 / (v1**2 / (np.asarray(n1) - 1) + v2**2 / (np.asarray(n2) - 1))
        half = scipy_stats.t.ppf(0.975, dof) * np.sqrt(v1 + v2)
    return np.where(v1 + v2 == 0, 0.0, half)


def _seed_order(seeds: pd.Series) -> pd.Series:
    """Sort key ordering seeds numerically, non-numeric ones last."""
    return pd.to_numeric(seeds, errors="coerce")


def tie_verdicts(ranked: pd.DataFrame) -> np.ndarray:
    """Each row against the first: leader, tied (95% CIs overlap), behind, or unreplicated
    (either side has a single seed, so no CI)."""
    leader = ranked.iloc[0]
    overlaps = ranked["mean"] + ranked["ci"] >= leader["mean"] - leader["ci"]
    verdicts = np.where(overlaps, "tied", "behind").astype(object)
    verdicts[(ranked["n"] < 2).to_numpy() | (leader["n"] < 2)] = "unreplicated"
    verdicts[0] = "leader"
    return verdicts


def summarize_configs(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, best mean first: n, mean, std (ddof=1), ci, mean costs,
    accuracy per training second, seeds, the lowest seed's command, rank and tie verdict."""
    keys = config_columns(tidy)
    by_seed = tidy.sort_values("seed", key=_seed_order, kind="stable")
    summary = by_seed.groupby(keys, sort=False).agg(
        n=("value", "size"), mean=("value", "mean"), std=("value", "std"),
        **{cost: (cost, "mean") for cost in COSTS},
        seeds=("seed", lambda seeds: tuple(dict.fromkeys(seeds))),
        command=("command", "first"),
    ).reset_index()
    summary["ci"] = ci_half_width(summary["std"], summary["n"])
    summary["per_second"] = summary["mean"] / summary["fit_seconds"]
    summary = summary.sort_values(["mean", *keys], ascending=[False] + [True] * len(keys),
                                  ignore_index=True, kind="stable")
    summary["rank"] = np.arange(1, len(summary) + 1)
    summary["verdict"] = tie_verdicts(summary)
    return summary


def ordered_groups(summary: pd.DataFrame, by: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """`summary` split by `by` (rank order kept inside), groups ordered by mean n_train."""
    groups = list(summary.groupby(by, sort=True))
    n_train = [group["n_train"].mean() for _, group in groups]
    order = sorted(range(len(groups)), key=lambda i: (np.isnan(n_train[i]), n_train[i], i))
    return [groups[i] for i in order]


def winners_by_size(summary: pd.DataFrame, shown: list[str]) -> pd.DataFrame:
    """Per training-set size (smallest first): the best configuration, and the labels of those
    statistically tied with it in `tied_with`."""
    by = data_columns(shown)
    rest = [c for c in shown if c not in by]
    rows = []
    for _, group in ordered_groups(summary, by):
        verdicts = tie_verdicts(group)
        tied = tuple(config_label(row, rest) for _, row in group[verdicts == "tied"].iterrows())
        rows.append(group.iloc[0].to_dict() | {"tied_with": tied})
    return pd.DataFrame(rows)


def strategy_by_size(summary: pd.DataFrame, shown: list[str]) -> pd.DataFrame:
    """Best mean of each strategy (over the other params) at each training-set size."""
    by = data_columns(shown)
    rows = []
    for key, group in ordered_groups(summary, by):
        best = group.groupby(STRATEGY)["mean"].max()
        rows.append(dict(zip(by, key, strict=True)) | best.to_dict())
    table = pd.DataFrame(rows)
    return table[[*by, *sorted(c for c in table if c not in by)]]


def scratch_cell(shown: list[str]) -> list[str]:
    """Params a transfer run shares with its scratch control: all shown but strategy and weights."""
    return [c for c in shown if not c.startswith("strategy.") and c != "backbone.weights"]


def gain_verdicts(gain: ArrayLike, half: ArrayLike) -> np.ndarray:
    """better / worse when the CI of the gain excludes zero, else no clear difference;
    unreplicated when there is no CI."""
    gain, half = np.asarray(gain, dtype=float), np.asarray(half, dtype=float)
    verdicts = np.where(gain - half > 0, "better",
                        np.where(gain + half < 0, "worse", "no clear difference")).astype(object)
    verdicts[np.isnan(half)] = "unreplicated"
    return verdicts


def gains_over_scratch(tidy: pd.DataFrame, summary: pd.DataFrame,
                       shown: list[str]) -> pd.DataFrame:
    """Each transfer configuration's mean minus its scratch control's (the pooled scratch runs
    with the same backbone and data), with a Welch 95% CI; empty without scratch runs."""
    cell = scratch_cell(shown)
    scratch = tidy[tidy[STRATEGY] == SCRATCH].groupby(cell)["value"].agg(
        scratch_n="size", scratch_mean="mean", scratch_std="std").reset_index()
    gains = summary[summary[STRATEGY] != SCRATCH].merge(scratch, on=cell, how="inner")
    gains["gain"] = gains["mean"] - gains["scratch_mean"]
    gains["gain_ci"] = welch_half_width(gains["std"], gains["n"], gains["scratch_std"],
                                        gains["scratch_n"])
    gains["gain_verdict"] = gain_verdicts(gains["gain"], gains["gain_ci"])
    by = data_columns(shown)
    order = ["n_train", *by, *(c for c in cell if c not in by), STRATEGY]
    return gains.sort_values(order, ignore_index=True, kind="stable")


def pareto_mask(benefit: ArrayLike, cost: ArrayLike) -> np.ndarray:
    """True where no other point is at least as good on both (benefit up, cost down) and strictly
    better on one; points with a missing value are never on the front."""
    b, c = np.asarray(benefit, dtype=float), np.asarray(cost, dtype=float)
    no_worse = (b[:, None] >= b[None, :]) & (c[:, None] <= c[None, :])
    better = (b[:, None] > b[None, :]) | (c[:, None] < c[None, :])
    valid = ~(np.isnan(b) | np.isnan(c))
    dominated = (no_worse & better & valid[:, None]).any(axis=0)
    return valid & ~dominated


def pareto_front(summary: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The configurations on the (mean metric up, `cost` down) Pareto front, cheapest first
    (among those that logged the cost)."""
    summary = summary[summary[cost].notna()]
    front = summary[pareto_mask(summary["mean"], summary[cost])]
    return front.sort_values(cost, kind="stable")


def natural_key(value: str) -> tuple[int, float, str]:
    """Sort key putting numbers in numeric order before other strings."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def grid(runs: pd.DataFrame, shown: list[str]) -> dict[str, list[str]]:
    """Distinct values of each naming param and of the seed over all runs; sizes by n_train."""
    values = {name: sorted(column(runs, f"params.{name}").dropna().unique(), key=natural_key)
              for name in [*shown, "seed"]}
    n_train = column(runs, "metrics.n_train").astype(float).groupby(runs[f"params.{SIZE}"]).mean()
    values[SIZE] = sorted(values[SIZE], key=lambda size: (
        np.isnan(n_train.get(size, np.nan)), n_train.get(size, 0.0), natural_key(size)))
    return values


def status_counts(runs: pd.DataFrame) -> dict[str, int]:
    """Runs per MLflow status."""
    return runs["status"].value_counts().to_dict()


def distinct_tag(runs: pd.DataFrame, tag: str) -> list[str]:
    """Distinct values of a tag over the runs that carry it."""
    return sorted(column(runs, f"tags.{tag}").dropna().unique().tolist())


def unfinished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish, oldest first, with status, `error` tag, and whether a rerun of
    the same config and seed (config_hash) has finished since."""
    finished = set(column(runs[runs["status"] == FINISHED], "tags.config_hash").dropna())
    unfinished = runs[runs["status"] != FINISHED].sort_values("start_time", kind="stable")
    rerun = column(unfinished, "tags.config_hash").isin(finished)
    return pd.DataFrame({"run_name": unfinished["run_name"], "status": unfinished["status"],
                         "error": column(unfinished, "tags.error").fillna(MISSING),
                         "rerun_finished": rerun.map({True: "yes", False: "no"})})
