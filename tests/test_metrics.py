"""A classifier's scores, counted as sklearn counts them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from tlbench.training import metrics


@pytest.mark.parametrize("seed", range(6))
def test_evaluation_counts_as_sklearn_does(seed):
    """Random labels of 5 classes, some classes never true or never predicted."""
    rng = np.random.default_rng(seed)
    y, predicted = rng.integers(0, 5 - seed % 3, 60), rng.integers(seed % 2, 5, 60)
    confusion = metrics.confusion_counts(y, predicted, 5)
    assert (confusion == confusion_matrix(y, predicted, labels=np.arange(5))).all()
    assert metrics.accuracy(y, predicted) == accuracy_score(y, predicted)
    assert metrics.macro_f1(confusion) == pytest.approx(f1_score(y, predicted, average="macro"),
                                                      abs=1e-12)
