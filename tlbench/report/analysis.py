"""Everything the report shows, computed once from a sweep's run table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from tlbench.report.agreement import ScoreAgreement, score_agreement
from tlbench.report.stats import (
    check_tunable,
    gains_over_scratch,
    pareto_front,
    shown_columns,
    strategy_by_size,
    summarize_configs,
    tidy_runs,
    trained_runs,
    tune_on_validation,
    winners_by_size,
)


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed from a sweep's run table for one metric. With
    `tuned` params, `summary` holds only their chosen values (a column each, beside `shown`) and
    `choices` every candidate (see `tune_on_validation`)."""

    runs: pd.DataFrame
    shown: list[str]
    summary: pd.DataFrame
    winners: pd.DataFrame
    by_strategy: pd.DataFrame
    gains: pd.DataFrame
    time_front: pd.DataFrame
    params_front: pd.DataFrame
    flops_front: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores: ScoreAgreement | None = None
    tuned: tuple[str, ...] = ()
    choices: pd.DataFrame | None = None


def analyse(runs: pd.DataFrame, metric: str, score_runs: pd.DataFrame | None = None,
            tune: Sequence[str] = ()) -> Analysis:
    """Aggregate the runs; the result tables are empty when no finished run logged `metric`.
    With `tune`, those params are first chosen per configuration on validation (`choices`).
    With `score_runs` (the experiment's score runs), also the scores' agreement with `metric`."""
    runs = trained_runs(runs)
    tidy = tidy_runs(runs, metric)
    tuned = tuple(tune)
    check_tunable(tidy, tuned)
    choices = None
    if tuned and not tidy.empty:
        tidy, choices = tune_on_validation(tidy, tuned)
    shown = shown_columns(tidy, tuned)
    if tidy.empty:
        empty = pd.DataFrame()
        return Analysis(runs, shown, empty, empty, empty, empty, empty, empty, tuned=tuned,
                        choices=choices)
    summary = summarize_configs(tidy)
    return Analysis(
        runs=runs, shown=shown, summary=summary, tuned=tuned, choices=choices,
        winners=winners_by_size(summary, shown),
        by_strategy=strategy_by_size(summary, shown),
        gains=gains_over_scratch(tidy, summary, shown),
        time_front=pareto_front(summary, "fit_seconds"),
        params_front=pareto_front(summary, "params_trainable"),
        flops_front=pareto_front(summary, "flops"),
        scores=None if score_runs is None else score_agreement(tidy, summary, shown, score_runs),
    )


@dataclass(frozen=True)
class Source:
    """Where the runs came from and how they are ranked."""

    experiment: str
    sweep_id: str
    tracking_uri: str
    metric: str
    filter: str | None = None
    top: int | None = None
