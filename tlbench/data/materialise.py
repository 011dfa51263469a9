"""The splits' images in memory at the backbone's input size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlbench.data.source import LabelledImages, resize
from tlbench.data.split import Splits


@dataclass(frozen=True)
class Dataset:
    """The splits one run trains and evaluates on, resized to the backbone's input size."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes in the source, whether or not the subset has them all."""
        return len(self.class_names)


def materialise(source: LabelledImages, splits: Splits, input_size: int) -> Dataset:
    """The splits' images resized to the backbone's input size, in memory."""
    def images(positions: np.ndarray) -> np.ndarray:
        return resize(source.images[positions], input_size)

    return Dataset(
        x_train=images(splits.train), y_train=source.labels[splits.train],
        x_val=images(splits.val), y_val=source.labels[splits.val],
        x_test=images(splits.test), y_test=source.labels[splits.test],
        class_names=source.class_names,
    )
