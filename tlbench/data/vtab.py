"""VTAB-1k labels that are not a TFDS ClassLabel feature, computed from each example as
google-research/task_adaptation computes them (task_adaptation/data/<file>.py, cited per label).
data=tfds names one with data.derived_label; conf/data/vtab1k/ uses them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DerivedLabel:
    """A label computed from a TFDS example (as NumPy), with its class names."""

    classes: tuple[str, ...]
    compute: Callable[[dict], int]


def _bin(value: float, thresholds: list[float]) -> int:
    """The last threshold index below `value`, as VTAB's tf.reduce_max(tf.where(thrs - v < 0))."""
    return int(np.flatnonzero(np.asarray(thresholds) - value < 0).max())


def clevr_count(example: dict) -> int:
    """clevr.py _count_preprocess_fn: number of objects minus 3 (3 to 10 objects, 8 classes)."""
    return len(example["objects"]["size"]) - 3


def clevr_closest_distance(example: dict) -> int:
    """clevr.py _closest_object_preprocess_fn: the nearest object's depth in 6 bins."""
    depth = float(np.min(example["objects"]["pixel_coords"][:, 2]))
    return _bin(depth, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_closest_vehicle_distance(example: dict) -> int:
    """kitti.py _closest_vehicle_distance_pp: the nearest car, van or truck (type < 3) within
    8 m, 20 m, farther, or none (4 classes)."""
    objects = example["objects"]
    depths = objects["location"][np.asarray(objects["type"]) < 3, 2]
    return _bin(float(np.min(depths, initial=1000.0)), [-100.0, 8.0, 20.0, 999.0])


def dsprites_binned(feature: str, original: int, classes: int) -> Callable[[dict], int]:
    """dsprites.py preprocess_fn: floor(value / (original / classes)), e.g. 32 x-positions or
    40 orientations into 16 classes."""
    factor = original / classes
    return lambda example: int(np.floor(float(example[feature]) / factor))


DERIVED_LABELS = {
    "clevr_count": DerivedLabel(tuple(str(n) for n in range(3, 11)), clevr_count),
    "clevr_closest_distance": DerivedLabel(
        tuple(f"bin{i}" for i in range(6)), clevr_closest_distance
    ),
    "kitti_closest_vehicle_distance": DerivedLabel(
        ("under 8 m", "8-20 m", "over 20 m", "no vehicle"), kitti_closest_vehicle_distance
    ),
    "dsprites_x_position": DerivedLabel(
        tuple(f"x{i}" for i in range(16)), dsprites_binned("label_x_position", 32, 16)
    ),
    "dsprites_orientation": DerivedLabel(
        tuple(f"orientation{i}" for i in range(16)), dsprites_binned("label_orientation", 40, 16)
    ),
}
