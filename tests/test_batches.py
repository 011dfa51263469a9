"""Batches of in-memory arrays: the same with or without prefetch, reshuffled each epoch from the
seed, and unshuffled pipelines reused for equal arrays only."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench import batches
from tlbench.batches import ArrayBatches, chained_batches


def labels(dataset) -> list[int]:
    """One pass over labelled batches: the labels in the order they come."""
    return [int(v) for _, ys in dataset for v in ys]


def test_batches_without_prefetch_are_the_same_batches():
    x = np.arange(70 * 3, dtype="float32").reshape(70, 3)
    y = np.arange(70)

    def epochs(prefetch: bool) -> list[list[int]]:
        dataset = batches.batches(x, y, 16, shuffle_seed=4, prefetch=prefetch)
        return [labels(dataset) for _ in range(3)]

    assert epochs(False) == epochs(True)
    assert epochs(False)[0] != epochs(False)[1] != list(range(70))  # reshuffled each epoch


def test_array_batches_reshuffle_each_epoch_from_the_seed():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    batches, again = ArrayBatches(x, y, 4, shuffle_seed=3), ArrayBatches(x, y, 4, shuffle_seed=3)
    first = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert len(batches) == 3 and sorted(first) == list(range(10))
    assert (first == np.concatenate([again[i][1] for i in range(3)])).all()
    batches.on_epoch_end()
    second = np.concatenate([batches[i][1] for i in range(3)])
    assert sorted(second) == list(range(10)) and (second != first).any()
    plain = ArrayBatches(x, y, 4, shuffle_seed=None)
    assert (np.concatenate([plain[i][1] for i in range(3)]) == y).all()


def test_an_unshuffled_pipeline_is_reused_for_equal_arrays_only():
    """Equal arrays (other objects, same values) get the pipeline kept from the last call, which
    yields the same batches again; other values, another batch size or a shuffled pipeline get
    a new one."""
    x = np.arange(40 * 3, dtype="float32").reshape(40, 3)
    y = np.arange(40)
    val = batches.batches(x, y, 16, prefetch=False)
    assert batches.batches(x.copy(), y.copy(), 16, prefetch=False) is val
    assert labels(val) == labels(val) == list(range(40))
    changed = x.copy()
    changed[7, 1] += 1
    assert batches.batches(changed, y, 16, prefetch=False) is not val
    assert batches.batches(changed, y, 8, prefetch=False) is not \
        batches.batches(changed, y, 16, prefetch=False)
    assert batches.batches(x, y, 16, 3) is not batches.batches(x, y, 16, 3)
    assert batches.batches(x, y.astype("float32"), 16, prefetch=False) is not \
        batches.batches(x, y, 16, prefetch=False)


def test_chained_prediction_batches_are_reused_and_large_arrays_not_kept(monkeypatch):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 4)).astype("float32") for n in (20, 5, 9)]
    chained = chained_batches(arrays, 8)
    assert chained_batches([x.copy() for x in arrays], 8) is chained
    assert chained_batches(arrays[:2], 8) is not chained
    rows = np.concatenate([np.asarray(b[0] if isinstance(b, tuple) else b) for b in chained])
    np.testing.assert_array_equal(rows, np.concatenate(arrays))
    monkeypatch.setattr(batches, "REUSE_BYTES", 0)
    assert chained_batches(arrays, 8) is not chained_batches(arrays, 8)
    assert ("chained", 8) not in batches.KEPT


@pytest.fixture(autouse=True)
def no_kept_pipelines():
    """Each test starts and ends without kept pipelines."""
    batches.KEPT.clear()
    yield
    batches.KEPT.clear()
