"""scikit-learn's digits: 1,797 8x8 grey images shipped with the package (no network)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import ArrayImages, LabelledImages, note_upscaling, register, source_size
from tlbench.errors import check


@dataclass(kw_only=True)
class DigitsConfig(DataConfig):
    """scikit-learn's load_digits: 1,797 8x8 grey digits, shipped with the package.

    `classes` keeps only those digits, relabelled 0..k-1 in the given order; null keeps all ten.
    """

    classes: list[int] | None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classes is not None:
            check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)
                   and set(self.classes) <= set(range(10)), "data.classes", self.classes,
                   "null (all ten) or at least two distinct digits from 0 to 9")


def load_digits_images(cfg: DigitsConfig) -> LabelledImages:
    """scikit-learn's 8x8 digits (0-16 grey levels) as RGB images in [0, 255], classes kept."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = list(range(10)) if cfg.classes is None else list(cfg.classes)
    keep = np.isin(digits.target, classes)
    relabel = np.full(10, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    grey = digits.images[keep].astype(np.float32) * (255.0 / 16.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if source_size(cfg) > 8:
        note_upscaling("digits", len(rgb), len(rgb), (8, 8), source_size(cfg))
    return LabelledImages(ArrayImages(rgb), relabel[digits.target[keep]],
                          tuple(str(c) for c in classes))


register("digits", DigitsConfig, load_digits_images)
