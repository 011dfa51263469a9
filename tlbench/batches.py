"""In-memory arrays as Keras inputs: training and validation batches, chained prediction batches.

Unshuffled tf.data pipelines yield the same batches however often they are iterated, so the last
one of each kind is kept with the arrays it holds and reused for equal arrays: a sweep's later
runs on the same cached features and splits iterate it again instead of building it (the
validation and prediction pipelines cost ~8 ms a run to build on 2 cores).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from tlbench import runtime

REUSE_BYTES = 64 * 2**20
"""Arrays of at most this many bytes together are kept with their pipeline for reuse (larger
ones, images rather than features, cost more to hold and compare than to batch again)."""

KEPT: dict[tuple, tuple[list[np.ndarray], object]] = {}
"""The last unshuffled pipeline of each kind (see `reused`), with its arrays."""


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None,
            prefetch: bool = True):
    """Batches of arrays already resized and preprocessed once, reshuffled each epoch if seeded:
    a tf.data pipeline on TensorFlow, an ArrayBatches elsewhere. (tf.data's cache() would only
    copy these arrays again.) `prefetch=False` leaves out tf.data's prefetch thread and its
    tuning, which cost more than they overlap for a head on cached features (a 10-epoch fit
    ~10% faster); the batches are the same. Unshuffled tf.data pipelines are `reused` (an
    ArrayBatches costs less to build than to compare)."""
    if runtime.backend() != "tensorflow":
        return ArrayBatches(x, y, batch_size, shuffle_seed)
    if shuffle_seed is None:
        return reused(("batches", batch_size, prefetch), [x, y],
                      lambda: _tf_batches(x, y, batch_size, None, prefetch))
    return _tf_batches(x, y, batch_size, shuffle_seed, prefetch)


def _tf_batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None,
                prefetch: bool):
    """A new tf.data pipeline of `batches`."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if prefetch:
        return dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)


class ArrayBatches(keras.utils.PyDataset):
    """Batches of in-memory arrays for any backend, in a seeded order drawn anew each epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int,
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
        return self.x[rows], self.y[rows]

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order (unshuffled batches keep theirs)."""
        if self.rng is not None:
            self.order = self.rng.permutation(len(self.y))


def chained_batches(arrays: list[np.ndarray], batch_size: int):
    """Unlabelled batches of each array in turn, in order: tf.data on TensorFlow (inputs only,
    one prefetch: 7 ms less a run's prediction than labelled, prefetched pieces; `reused`),
    else a PyDataset."""
    if runtime.backend() != "tensorflow":
        return ChainedBatches(arrays, batch_size)
    return reused(("chained", batch_size), arrays, lambda: _tf_chained(arrays, batch_size))


def _tf_chained(arrays: list[np.ndarray], batch_size: int):
    """A new tf.data pipeline of `chained_batches`."""
    import tensorflow as tf

    chained = None
    for x in arrays:
        split = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
        chained = split if chained is None else chained.concatenate(split)
    return chained.prefetch(tf.data.AUTOTUNE)


class ChainedBatches(keras.utils.PyDataset):
    """Batches of each in-memory array in turn, for any backend."""

    def __init__(self, arrays: list[np.ndarray], batch_size: int) -> None:
        super().__init__()
        self.arrays, self.batch_size = arrays, batch_size
        self.starts = [(index, start) for index, x in enumerate(arrays)
                       for start in range(0, len(x), batch_size)]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[np.ndarray]:
        array, start = self.starts[index]
        return (self.arrays[array][start:start + self.batch_size],)


def reused(kind: tuple, arrays: list[np.ndarray], make: Callable[[], object]):
    """The pipeline `make` builds of `arrays`, or the one kept from the last call of this kind
    when its arrays are equal in shape, dtype and value (compared: ~1 ms for 4.6 MB). Only
    arrays of at most REUSE_BYTES together are kept."""
    kept = KEPT.get(kind)
    if kept is not None and _equal(kept[0], arrays):
        return kept[1]
    made = make()
    if sum(x.nbytes for x in arrays) <= REUSE_BYTES:
        KEPT[kind] = (arrays, made)
    else:
        KEPT.pop(kind, None)
    return made


def _equal(kept: list[np.ndarray], arrays: list[np.ndarray]) -> bool:
    """Whether two lists of arrays are equal element for element, shapes and dtypes included."""
    return len(kept) == len(arrays) and all(
        a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))
        for a, b in zip(kept, arrays, strict=True))
