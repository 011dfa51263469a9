"""Batches of a split's rows: the same in memory or streamed from the cache file, with or
without prefetch, reshuffled each epoch from the seed, and unshuffled pipelines reused for the
same rows only."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.rowcache import RowFile, Rows
from tlbench.training import batches
from tlbench.training.batches import RowBatches, chained_batches


def labels(dataset) -> list[int]:
    """One pass over labelled batches: the labels in the order they come."""
    return [int(v) for _, ys in dataset for v in ys]


def rows_and_labels(dataset) -> tuple[np.ndarray, np.ndarray]:
    """One pass over labelled batches: every row and label in the order they come."""
    parts = [(np.asarray(x), np.asarray(y)) for x, y in dataset]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def stored(tmp_path, array: np.ndarray, positions: np.ndarray | None = None) -> Rows:
    """The array written to a row file, served at `positions` (default: every row)."""
    store = RowFile.create(tmp_path / "rows.npy", len(array), array.shape[1:], array.dtype)
    store.write(np.arange(len(array)), array)
    return Rows(store, np.arange(len(array)) if positions is None else positions)


def test_batches_without_prefetch_are_the_same_batches():
    x = Rows.of(np.arange(70 * 3, dtype="float32").reshape(70, 3))
    y = np.arange(70)

    def epochs(prefetch: bool) -> list[list[int]]:
        dataset = batches.batches(x, y, 16, shuffle_seed=4, prefetch=prefetch)
        return [labels(dataset) for _ in range(3)]

    assert epochs(False) == epochs(True)
    assert epochs(False)[0] != epochs(False)[1] != list(range(70))  # reshuffled each epoch


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_streamed_rows_give_the_batches_rows_in_memory_give(tmp_path, monkeypatch, dtype):
    """Streaming a split from its cache file (rows above LOAD_BYTES) changes no batch: the same
    rows, labels and seeded order every epoch, shuffled or not, as the rows read into memory."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (90, 4, 4, 3)).astype(dtype)
    x, y = stored(tmp_path, array, np.arange(3, 90, 2)), np.arange(3, 90, 2)

    def epochs(seed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
        batches.KEPT.clear()
        dataset = batches.batches(x, y, 8, shuffle_seed=seed)
        return [rows_and_labels(dataset) for _ in range(2)]

    for seed in (5, None):
        in_memory = epochs(seed)
        monkeypatch.setattr(batches, "LOAD_BYTES", 0)
        streamed = epochs(seed)
        monkeypatch.undo()
        for (rows, ys), (rows_again, ys_again) in zip(in_memory, streamed, strict=True):
            np.testing.assert_array_equal(ys, ys_again)
            np.testing.assert_array_equal(rows, rows_again)
            np.testing.assert_array_equal(rows, array[ys])
            assert rows_again.dtype == np.dtype(dtype)
        reshuffled = not np.array_equal(in_memory[0][1], in_memory[1][1])
        assert reshuffled == (seed is not None)


def test_row_batches_reshuffle_each_epoch_from_the_seed():
    x, y = Rows.of(np.arange(10.0)[:, None]), np.arange(10)
    batches, again = RowBatches(x, y, 4, shuffle_seed=3), RowBatches(x, y, 4, shuffle_seed=3)
    first = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert len(batches) == 3 and sorted(first) == list(range(10))
    assert (first == np.concatenate([again[i][1] for i in range(3)])).all()
    batches.on_epoch_end()
    second = np.concatenate([batches[i][1] for i in range(3)])
    assert sorted(second) == list(range(10)) and (second != first).any()
    plain = RowBatches(x, y, 4, shuffle_seed=None)
    assert (np.concatenate([plain[i][1] for i in range(3)]) == y).all()


def test_an_unshuffled_pipeline_is_reused_for_the_same_rows_only(tmp_path):
    """The same rows (equal arrays, or the same positions of the same cache file) get the
    pipeline kept from the last call, which yields the same batches again; other values or
    positions, another batch size or a shuffled pipeline get a new one."""
    x = np.arange(40 * 3, dtype="float32").reshape(40, 3)
    y = np.arange(40)
    val = batches.batches(Rows.of(x), y, 16, prefetch=False)
    assert batches.batches(Rows.of(x.copy()), y.copy(), 16, prefetch=False) is val
    assert labels(val) == labels(val) == list(range(40))
    changed = x.copy()
    changed[7, 1] += 1
    assert batches.batches(Rows.of(changed), y, 16, prefetch=False) is not val
    assert batches.batches(Rows.of(changed), y, 8, prefetch=False) is not \
        batches.batches(Rows.of(changed), y, 16, prefetch=False)
    assert batches.batches(Rows.of(x), y, 16, 3) is not batches.batches(Rows.of(x), y, 16, 3)
    assert batches.batches(Rows.of(x), y.astype("float32"), 16, prefetch=False) is not \
        batches.batches(Rows.of(x), y, 16, prefetch=False)
    on_disk = stored(tmp_path, x)
    kept = batches.batches(on_disk, y, 16, prefetch=False)
    same_file = Rows(RowFile.open(on_disk.store.path, 40), np.arange(40))
    assert batches.batches(same_file, y, 16, prefetch=False) is kept
    assert batches.batches(Rows(same_file.store, np.arange(1, 41) % 40), y, 16,
                           prefetch=False) is not kept


def test_chained_prediction_batches_are_reused_and_large_rows_streamed(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    arrays = [Rows.of(rng.normal(size=(n, 4)).astype("float32")) for n in (20, 5, 9)]
    chained = chained_batches(arrays, 8)
    assert chained_batches([Rows.of(x.store.copy()) for x in arrays], 8) is chained
    assert chained_batches(arrays[:2], 8) is not chained

    def served(dataset) -> np.ndarray:
        return np.concatenate([np.asarray(b[0] if isinstance(b, tuple) else b) for b in dataset])

    everything = np.concatenate([x.load() for x in arrays])
    np.testing.assert_array_equal(served(chained), everything)
    monkeypatch.setattr(batches, "LOAD_BYTES", 0)
    for i in range(len(arrays)):
        (tmp_path / str(i)).mkdir()
    streamed = [stored(tmp_path / str(i), x.load()) for i, x in enumerate(arrays)]
    assert chained_batches(streamed, 8) is not chained_batches(streamed, 8)
    assert ("chained", 8) not in batches.KEPT
    np.testing.assert_array_equal(served(chained_batches(streamed, 8)), everything)


@pytest.fixture(autouse=True)
def no_kept_pipelines():
    """Each test starts and ends without kept pipelines."""
    batches.KEPT.clear()
    yield
    batches.KEPT.clear()
