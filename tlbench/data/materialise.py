"""A run's splits as rows of the decoded-image cache, read a batch at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlbench.data.decoded import decoded_images
from tlbench.data.source import LabelledImages
from tlbench.data.split import Splits
from tlbench.rowcache import Rows


@dataclass(frozen=True)
class Dataset:
    """The splits one run trains and evaluates on: rows (images at the backbone's input size,
    or a frozen base's outputs) and labels."""

    x_train: Rows
    y_train: np.ndarray
    x_val: Rows
    y_val: np.ndarray
    x_test: Rows
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes in the source, whether or not the subset has them all."""
        return len(self.class_names)


def split_rows(store, source: LabelledImages, splits: Splits) -> Dataset:
    """The splits' rows of a store holding one row per source image, with their labels."""
    return Dataset(Rows(store, splits.train), source.labels[splits.train],
                   Rows(store, splits.val), source.labels[splits.val],
                   Rows(store, splits.test), source.labels[splits.test], source.class_names)


def materialise(source: LabelledImages, name: str, splits: Splits, input_size: int, root: Path,
                fill_limit: int) -> Dataset:
    """The splits' images as uint8 rows at the backbone's input size, decoded into the cache
    (once) where they are not there yet."""
    used = np.unique(np.concatenate([splits.train, splits.val, splits.test]))
    return split_rows(decoded_images(source, name, input_size, used, root, fill_limit), source,
                      splits)
