"""How well transferability scores (score runs of `python -m tlbench.rank`, current scores
version only) ordered the backbones the sweep trained, beside model size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from tlbench.report.stats import (
    BACKBONE,
    BASELINES,
    CANDIDATE_FAMILIES,
    FINISHED,
    KIND_TAG,
    MIN_TAU_POINTS,
    MISSING,
    SCORE_KIND,
    SCORES_VERSION_TAG,
    SCRATCH,
    SIZE,
    STRATEGY,
    column,
    latest_per_config,
    ordered_groups,
)
from tlbench.scores import SCORES_VERSION, score_names


@dataclass(frozen=True)
class ScoreAgreement:
    """Transferability scores beside the accuracy reached, per strategy and size.

    `points`: one row per (group, backbone): the group and candidate columns, `n` and `mean` of
    the trained configuration, `score_n` (seeds scored), each score's mean over those seeds and
    each baseline (params_total, flops: of the trained runs, else of the score runs).
    `taus`: one row per group: `backbones` and, per score and baseline, `<name>_tau`, `<name>_p`
    and `<name>_k` (backbones with that value). `found`: finished score runs of the current
    scores version in the experiment; `other_version`: score runs of another version, left out."""

    group: list[str]
    candidate: list[str]
    points: pd.DataFrame
    taus: pd.DataFrame
    found: int
    other_version: int = 0


def current_version(score_runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The score runs of SCORES_VERSION (tag scores.version; untagged runs are version 1), and
    how many of another version were left out (their scores are not comparable)."""
    version = column(score_runs, f"tags.{SCORES_VERSION_TAG}").fillna("1").astype(str)
    current = version.str.strip() == str(SCORES_VERSION)
    return score_runs[current], int((~current).sum())


def score_table(score_runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Finished score runs of the current scores version, the latest per config_hash: params
    (seed included), scores and `scored_<baseline>`; and the count of other-version runs."""
    runs = score_runs[column(score_runs, f"tags.{KIND_TAG}") == SCORE_KIND] \
        if not score_runs.empty else score_runs
    runs, other_version = current_version(runs)
    if runs.empty:
        return pd.DataFrame(), other_version
    done = latest_per_config(runs[runs["status"] == FINISHED])
    table = pd.DataFrame({c.removeprefix("params."): done[c].fillna(MISSING)
                          for c in done if c.startswith("params.")})
    for name in score_names():
        table[name] = column(done, f"metrics.{name}").astype(float)
    for name in BASELINES:
        table[f"scored_{name}"] = column(done, f"metrics.{name}").astype(float)
    return table.reset_index(drop=True), other_version


def join_keys(tidy: pd.DataFrame, scores: pd.DataFrame) -> list[str]:
    """Params shared by trained and score runs that fix the frozen features and the train
    subset: backbone.*, pretrain.*, data.* (the seed is joined apart)."""
    return sorted(c for c in scores if c in tidy and c.startswith(
        ("backbone.", "pretrain.", "data.")))


def kendall(scores: pd.Series, accuracy: pd.Series) -> tuple[float, float, int]:
    """Kendall's tau-b and its p-value between a score and the accuracy over the backbones that
    have the score, and how many they are; NaN below MIN_TAU_POINTS or when either is constant."""
    have = scores.notna() & accuracy.notna()
    k = int(have.sum())
    if k < MIN_TAU_POINTS or scores[have].nunique() < 2 or accuracy[have].nunique() < 2:
        return np.nan, np.nan, k
    result = scipy_stats.kendalltau(scores[have], accuracy[have])
    return float(result.statistic), float(result.pvalue), k


def score_agreement(tidy: pd.DataFrame, summary: pd.DataFrame, shown: list[str],
                    score_runs: pd.DataFrame) -> ScoreAgreement:
    """Join score runs with the trained configurations on the frozen base and data (same seeds
    only), per strategy group (scratch left out: it does not start from the scored weights)."""
    scores, other_version = score_table(score_runs)
    group = [c for c in shown if not c.startswith(CANDIDATE_FAMILIES)]
    candidate = [c for c in shown if c.startswith(CANDIDATE_FAMILIES)]
    if "backbone.weights" not in candidate:
        candidate.append("backbone.weights")
    empty = ScoreAgreement(group, candidate, pd.DataFrame(), pd.DataFrame(), len(scores),
                           other_version)
    if scores.empty or "seed" not in scores:
        return empty
    keys = join_keys(tidy, scores)
    if not {BACKBONE, SIZE} <= set(keys):
        return empty
    seeds = tidy[[*keys, "seed"]].drop_duplicates()
    matched = scores.merge(seeds, on=[*keys, "seed"], how="inner")
    if matched.empty:
        return empty
    scored = [*score_names(), *(f"scored_{b}" for b in BASELINES)]
    per_base = matched.groupby(keys).agg(score_n=("seed", "nunique"),
                                         **{s: (s, "mean") for s in scored}).reset_index()
    trained = summary[summary[STRATEGY] != SCRATCH]
    points = trained.merge(per_base, on=keys, how="inner")
    if points.empty:
        return empty
    for name in BASELINES:
        points[name] = points[name].fillna(points[f"scored_{name}"])
    points = points[[*group, *candidate, "n_train", "n", "mean", "score_n", *score_names(),
                     *BASELINES]]
    rows = []
    for key, members in ordered_groups(points, group):
        row = dict(zip(group, key, strict=True)) | {"backbones": len(members)}
        for name in (*score_names(), *BASELINES):
            tau, p, k = kendall(members[name], members["mean"])
            row |= {f"{name}_tau": tau, f"{name}_p": p, f"{name}_k": k}
        rows.append(row)
    points = points.sort_values([*group, "mean"], ascending=[True] * len(group) + [False],
                                kind="stable", ignore_index=True)
    return ScoreAgreement(group, candidate, points, pd.DataFrame(rows), len(scores),
                          other_version)
