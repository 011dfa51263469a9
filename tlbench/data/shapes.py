"""Procedural shapes and textures (numpy only), deterministic by seed: a far source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import ArrayImages, LabelledImages, note_upscaling, register, source_size
from tlbench.errors import check

SHAPE_NAMES = ("disc", "square", "triangle", "ring", "cross", "diamond", "hstripes", "vstripes",
               "checker", "dots")


@dataclass(kw_only=True)
class ShapesConfig(DataConfig):
    """Procedural shapes and textures (numpy only), deterministic by `seed`: a far source."""

    n_classes: int
    images_per_class: int
    image_size: int
    seed: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check(2 <= self.n_classes <= len(SHAPE_NAMES), "data.n_classes", self.n_classes,
               f"2 to {len(SHAPE_NAMES)}")
        check(self.images_per_class >= 10, "data.images_per_class", self.images_per_class,
               "at least 10")
        check(self.image_size >= 8, "data.image_size", self.image_size, "at least 8")


def _shape_masks(kind: str, u: np.ndarray, v: np.ndarray, x: np.ndarray, y: np.ndarray,
                 freq: np.ndarray) -> np.ndarray:
    """Foreground mask of one shape (object coordinates u, v) or texture (image coordinates)."""
    r2 = u**2 + v**2
    masks = {
        "disc": lambda: r2 <= 1,
        "square": lambda: np.maximum(abs(u), abs(v)) <= 0.8,
        "triangle": lambda: (v <= 0.7) & (v >= 2 * abs(u) - 1.0),
        "ring": lambda: (r2 >= 0.45) & (r2 <= 1),
        "cross": lambda: (np.minimum(abs(u), abs(v)) <= 0.25) & (np.maximum(abs(u), abs(v)) <= 0.9),
        "diamond": lambda: abs(u) + abs(v) <= 0.9,
        "hstripes": lambda: np.sin(freq * y) > 0,
        "vstripes": lambda: np.sin(freq * x) > 0,
        "checker": lambda: np.sin(freq * x) * np.sin(freq * y) > 0,
        "dots": lambda: np.sin(freq * x) * np.sin(freq * y) > 0.5,
    }
    return masks[kind]()


def load_shapes_images(cfg: ShapesConfig) -> LabelledImages:
    """Shapes and textures: random contrast, tint, place, size, small rotation, and noise."""
    rng = np.random.default_rng(cfg.seed)
    n, size = cfg.images_per_class, cfg.image_size
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    images, labels = [], []
    for label, kind in enumerate(SHAPE_NAMES[:cfg.n_classes]):
        centre = rng.uniform(-0.15, 0.15, (2, n, 1, 1))
        scale = rng.uniform(0.6, 0.9, (n, 1, 1))
        angle = rng.uniform(-0.26, 0.26, (n, 1, 1))
        freq = rng.uniform(6, 14, (n, 1, 1))
        dx, dy = (x - centre[0]) / scale, (y - centre[1]) / scale
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = dy * np.cos(angle) - dx * np.sin(angle)
        mask = _shape_masks(kind, u, v, x, y, freq)[..., None]
        background = rng.uniform(0, 255, (n, 1, 1, 1))
        foreground = (background + rng.uniform(96, 160, (n, 1, 1, 1))) % 256
        tint = rng.uniform(0.6, 1.0, (n, 1, 1, 3))
        noise = rng.normal(0, 10, (n, size, size, 3))
        images.append(np.clip(np.where(mask, foreground, background) * tint + noise, 0, 255))
        labels.append(np.full(n, label, dtype=np.int64))
    pixels = np.concatenate(images).astype(np.float32)
    if source_size(cfg) > size:
        note_upscaling("shapes", len(pixels), len(pixels), (size, size), source_size(cfg))
    return LabelledImages(ArrayImages(pixels), np.concatenate(labels), SHAPE_NAMES[:cfg.n_classes])


register("shapes", ShapesConfig, load_shapes_images)
