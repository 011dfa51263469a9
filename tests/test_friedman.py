"""Friedman, Iman–Davenport and Nemenyi against Demšar 2006's worked example (JMLR 7, section
3.2.4: four C4.5 variants, AUC on 14 UCI data sets, Table 6)."""

import numpy as np
import pytest
from scipy import stats

from tlbench.report.friedman import cliques, friedman_nemenyi, rank_rows, why_no_test

# Table 6: C4.5, C4.5+m, C4.5+cf, C4.5+m+cf on adult (sample), breast cancer, breast cancer
# wisconsin, cmc, ionosphere, iris, liver disorders, lung cancer, lymphography, mushroom,
# primary tumor, rheum, voting, wine.
AUC = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.654, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.975, 0.975],
        [0.957, 0.978, 0.946, 0.970],
    ]
)
# The ranks printed in Table 6. They equal rank_rows(AUC) except on voting, where the paper
# ranks C4.5+cf 2 and C4.5+m+cf 3 (unrounded AUCs) although both print as .975.
VOTING = 12
PUBLISHED_VOTING_RANKS = [4, 1, 2, 3]


def published_ranks() -> np.ndarray:
    ranks = rank_rows(AUC)
    ranks[VOTING] = PUBLISHED_VOTING_RANKS
    return ranks


def test_ranks_average_ties_best_first():
    ranks = rank_rows(AUC)
    assert ranks[0].tolist() == [4, 3, 2, 1]
    assert ranks[5].tolist() == [1, 2.5, 4, 2.5]  # iris: .931 twice
    assert ranks[9].tolist() == [2.5] * 4  # mushroom: all 1.000
    assert ranks[VOTING].tolist() == [4, 1, 2.5, 2.5]


def test_demsar_worked_example():
    """The paper's numbers: mean ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28; F_F = 3.69
    with (3, 39) degrees of freedom, above the critical 2.85; q_0.05 = 2.569; CD = 1.25."""
    test = friedman_nemenyi(published_ranks())
    assert test.mean_ranks == pytest.approx([3.143, 2.000, 2.893, 1.964], abs=5e-4)
    assert round(test.chi2, 2) == 9.28
    assert round(test.f, 2) == 3.69
    assert round(stats.f.ppf(0.95, 3, 39), 2) == 2.85 and test.f_p < 0.05
    assert round(test.q_alpha, 3) == 2.569
    assert round(test.cd, 2) == 1.25


def test_demsar_post_hoc_at_alpha_010():
    """At alpha 0.10, q = 2.291 and CD = 1.12: C4.5+m+cf (1.964) is significantly better than
    C4.5 (3.143), a difference of 1.179 that the 0.05 CD of 1.25 does not reach."""
    test = friedman_nemenyi(published_ranks(), alpha=0.10)
    assert round(test.q_alpha, 3) == 2.291
    assert round(test.cd, 2) == 1.12
    assert (
        test.cd < test.mean_ranks[0] - test.mean_ranks[3] < friedman_nemenyi(published_ranks()).cd
    )


def test_from_the_auc_table_itself():
    """Ranking the printed AUCs (voting tied) gives 3.143, 2.000, 2.929, 1.929 and
    chi2_F = 9.86; scipy.stats.friedmanchisquare, tie-corrected, would give 10.95."""
    test = friedman_nemenyi(rank_rows(AUC))
    assert test.mean_ranks == pytest.approx([22 / 7, 2.0, 41 / 14, 27 / 14])
    assert test.chi2 == pytest.approx(9.857, abs=1e-3)
    assert test.cd == pytest.approx(1.2536, abs=1e-4)


def test_cliques_join_ranks_closer_than_the_cd():
    test = friedman_nemenyi(published_ranks())
    # Sorted: 1.964, 2.000, 2.893, 3.143: all four lie within 1.25 of 1.964.
    assert cliques(test.mean_ranks, test.cd) == [(0, 3)]
    assert cliques([1.0, 1.5, 3.0, 3.2], 1.0) == [(0, 1), (2, 3)]
    assert cliques([1.0, 2.0, 3.0], 1.0) == []


@pytest.mark.parametrize(("k", "n", "runs"), [(3, 5, True), (2, 14, False), (4, 4, False)])
def test_test_runs_only_with_enough_configurations_and_datasets(k, n, runs):
    reason = why_no_test(k, n)
    assert (reason is None) == runs
    if reason:
        assert f"here {k} and {n}" in reason
