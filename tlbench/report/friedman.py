"""Friedman test, Iman–Davenport's F and the Nemenyi critical difference over a configurations ×
datasets table (Demšar, "Statistical comparisons of classifiers over multiple data sets", JMLR 7,
2006, sections 3.2.2 and 3.2.3).

The statistics are Demšar's formulas on average ranks (ties averaged, no tie correction), so they
reproduce his worked example; scipy.stats gives the distributions (chi-square, F, studentized
range). scipy.stats.friedmanchisquare is not used for the statistic: it applies a tie correction
that Demšar's formulas and the critical difference leave out, so it differs whenever a dataset
has tied scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

MIN_CONFIGURATIONS, MIN_DATASETS = 3, 5
ALPHA = 0.05


def rank_rows(scores: ArrayLike) -> np.ndarray:
    """Each row (a dataset) ranked across its columns (configurations): 1 = highest score, ties
    get the average of the ranks they span."""
    scores = np.asarray(scores, dtype=float)
    return np.vstack([stats.rankdata(-row, method="average") for row in scores])


@dataclass(frozen=True)
class FriedmanResult:
    """The Friedman test on k configurations over n datasets, and Nemenyi's critical difference."""

    mean_ranks: np.ndarray
    n_datasets: int
    chi2: float
    chi2_p: float
    f: float
    f_p: float
    q_alpha: float
    cd: float
    alpha: float


def friedman_nemenyi(ranks: ArrayLike, alpha: float = ALPHA) -> FriedmanResult:
    """Friedman's chi-square and Iman–Davenport's F with their p-values, and the Nemenyi critical
    difference at `alpha`, from a datasets × configurations matrix of ranks."""
    ranks = np.asarray(ranks, dtype=float)
    n, k = ranks.shape
    mean = ranks.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(mean**2) - k * (k + 1) ** 2 / 4)
    with np.errstate(divide="ignore"):  # every dataset ranks alike: chi2 at its maximum
        f = (n - 1) * chi2 / (n * (k - 1) - chi2)
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return FriedmanResult(
        mean_ranks=mean,
        n_datasets=n,
        chi2=float(chi2),
        chi2_p=float(stats.chi2.sf(chi2, k - 1)),
        f=float(f),
        f_p=float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if np.isfinite(f) else 0.0,
        q_alpha=float(q_alpha),
        cd=float(q_alpha * np.sqrt(k * (k + 1) / (6 * n))),
        alpha=alpha,
    )


def why_no_test(k: int, n: int) -> str | None:
    """Why the Friedman test is not run on k configurations over n datasets; None when it is."""
    if k >= MIN_CONFIGURATIONS and n >= MIN_DATASETS:
        return None
    return (
        f"no Friedman test: it needs at least {MIN_CONFIGURATIONS} configurations that ran "
        f"on every dataset and {MIN_DATASETS} datasets (here {k} and {n}); below that its "
        "chi-square approximation and the Nemenyi critical difference are not reliable."
    )


def cliques(mean_ranks: ArrayLike, cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last index into the ascending order of `mean_ranks`) of
    configurations whose mean ranks differ by less than `cd`: the bars of a CD diagram."""
    ordered = np.sort(np.asarray(mean_ranks, dtype=float))
    runs = []
    for first in range(len(ordered)):
        last = int(np.searchsorted(ordered, ordered[first] + cd, side="left")) - 1
        if last > first and not any(a <= first and last <= b for a, b in runs):
            runs.append((first, last))
    return runs
