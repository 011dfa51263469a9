"""A split's rows as Keras inputs: training and validation batches, chained prediction batches.

Rows (`tlbench.rowcache.Rows`: images, features or activations at a split's positions) of at
most LOAD_BYTES are read into memory once and batched from there; larger ones are streamed, each
batch read from the cache file when it is needed, so memory does not grow with the dataset.
Either way the batches are the same: on TensorFlow, the seeded shuffle draws an order of the
row indices exactly as it would of the rows themselves.

Unshuffled tf.data pipelines yield the same batches however often they are iterated, so the last
one of each kind is kept with the rows it serves and reused for the same rows: a sweep's later
runs on the same cached features and splits iterate it again instead of building it (the
validation and prediction pipelines cost ~8 ms a run to build on 2 cores).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from tlbench import runtime
from tlbench.rowcache import Rows

LOAD_BYTES = 64 * 2**20
"""Rows of at most this many bytes are read into memory and batched from there (and their
unshuffled pipelines kept for reuse); larger ones are streamed a batch at a time."""

KEPT: dict[tuple, tuple[list, object]] = {}
"""The last unshuffled pipeline of each kind (see `reused`), with the rows it serves."""


def batches(x: Rows, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None,
            prefetch: bool = True):
    """Batches of a split's rows and labels, reshuffled each epoch if seeded: a tf.data pipeline
    on TensorFlow, a RowBatches elsewhere. `prefetch=False` leaves out tf.data's prefetch
    thread and its tuning, which cost more than they overlap for a head on cached features (a
    10-epoch fit ~10% faster); the batches are the same. Unshuffled tf.data pipelines are
    `reused` (a RowBatches costs less to build than to compare)."""
    if runtime.backend() != "tensorflow":
        return RowBatches(in_memory(x), y, batch_size, shuffle_seed)
    if shuffle_seed is None:
        return reused(("batches", batch_size, prefetch), [x, y],
                      lambda: _tf_batches(x, y, batch_size, None, prefetch))
    return _tf_batches(x, y, batch_size, shuffle_seed, prefetch)


def in_memory(x: Rows) -> Rows:
    """The rows read into memory if they are small (LOAD_BYTES), else as they are (streamed)."""
    return Rows.of(x.load()) if x.nbytes <= LOAD_BYTES else x


def _tf_batches(x: Rows, y: np.ndarray, batch_size: int, shuffle_seed: int | None,
                prefetch: bool):
    """A new tf.data pipeline of `batches`: of the rows in memory, or of their indices mapped to
    rows read from the cache."""
    import tensorflow as tf

    streamed = x.nbytes > LOAD_BYTES
    items = tf.data.Dataset.range(len(y)) if streamed else \
        tf.data.Dataset.from_tensor_slices((x.load(), y))
    if shuffle_seed is not None:
        items = items.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = items.batch(batch_size)
    if streamed:
        dataset = dataset.map(_reader(x, y), num_parallel_calls=tf.data.AUTOTUNE)
    if prefetch:
        return dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)


def _reader(x: Rows, y: np.ndarray | None):
    """A tf.data map from a batch of row indices to the rows (and labels) they name."""
    import tensorflow as tf

    def read(index: np.ndarray):
        return (x.read(index), y[index]) if y is not None else x.read(index)

    def rows(index):
        dtypes = [tf.as_dtype(x.dtype)] + ([tf.as_dtype(y.dtype)] if y is not None else [])
        out = tf.numpy_function(read, [index], dtypes, stateful=False)
        out[0].set_shape((None, *x.row_shape))
        if y is None:
            return out[0]
        out[1].set_shape((None,))
        return out[0], out[1]

    return rows


class RowBatches(keras.utils.PyDataset):
    """Batches of a split's rows for any backend, in a seeded order drawn anew each epoch."""

    def __init__(self, x: Rows, y: np.ndarray, batch_size: int,
                 shuffle_seed: int | None) -> None:
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self.order = np.arange(len(y))
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x.read(rows), self.y[rows]

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order (unshuffled batches keep theirs)."""
        if self.rng is not None:
            self.order = self.rng.permutation(len(self.y))


def chained_batches(arrays: list[Rows], batch_size: int):
    """Unlabelled batches of each split's rows in turn, in order: tf.data on TensorFlow (inputs
    only, one prefetch: 7 ms less a run's prediction than labelled, prefetched pieces;
    `reused`), else a PyDataset."""
    if runtime.backend() != "tensorflow":
        return ChainedBatches([in_memory(x) for x in arrays], batch_size)
    return reused(("chained", batch_size), arrays, lambda: _tf_chained(arrays, batch_size))


def _tf_chained(arrays: list[Rows], batch_size: int):
    """A new tf.data pipeline of `chained_batches`."""
    import tensorflow as tf

    chained = None
    for x in arrays:
        split = tf.data.Dataset.range(len(x)).batch(batch_size).map(
            _reader(x, None), num_parallel_calls=tf.data.AUTOTUNE) \
            if x.nbytes > LOAD_BYTES else tf.data.Dataset.from_tensor_slices(x.load()) \
            .batch(batch_size)
        chained = split if chained is None else chained.concatenate(split)
    return chained.prefetch(tf.data.AUTOTUNE)


class ChainedBatches(keras.utils.PyDataset):
    """Batches of each split's rows in turn, for any backend."""

    def __init__(self, arrays: list[Rows], batch_size: int) -> None:
        super().__init__()
        self.arrays, self.batch_size = arrays, batch_size
        self.starts = [(index, start) for index, x in enumerate(arrays)
                       for start in range(0, len(x), batch_size)]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[np.ndarray]:
        array, start = self.starts[index]
        return (self.arrays[array].read(slice(start, start + self.batch_size)),)


def reused(kind: tuple, items: list, make: Callable[[], object]):
    """The pipeline `make` builds of `items` (rows, and labels), or the one kept from the last
    call of this kind when its items are the same (rows: `Rows.same_as`; labels: equal). Only
    pipelines of rows small enough to be read into memory are kept."""
    kept = KEPT.get(kind)
    if kept is not None and _same(kept[0], items):
        return kept[1]
    made = make()
    if sum(item.nbytes for item in items) <= LOAD_BYTES:
        KEPT[kind] = (items, made)
    else:
        KEPT.pop(kind, None)
    return made


def _same(kept: list, items: list) -> bool:
    """Whether two lists of rows and label arrays serve the same values, item for item."""
    def same(a, b) -> bool:
        if isinstance(a, Rows) or isinstance(b, Rows):
            return isinstance(a, Rows) and isinstance(b, Rows) and a.same_as(b)
        return a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))

    return len(kept) == len(items) and all(same(a, b) for a, b in zip(kept, items,
                                                                      strict=True))
