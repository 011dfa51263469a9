"""Seeded synthetic classes of Gaussian blobs and gratings, generated image by image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import ImageSource, LabelledImages, note_upscaling, register, source_size
from tlbench.errors import check


@dataclass(kw_only=True)
class SyntheticConfig(DataConfig):
    """Class prototypes of random Gaussian blobs and gratings, jittered and noised per image.

    Deterministic by `seed`, generated lazily image by image, so tens of thousands cost no memory
    until a split is materialised.
    """

    n_classes: int
    images_per_class: int
    image_size: int
    noise: float
    seed: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_classes >= 2, "data.n_classes", self.n_classes, "at least 2")
        check(self.images_per_class >= 10, "data.images_per_class", self.images_per_class,
               "at least 10")
        check(self.image_size >= 8, "data.image_size", self.image_size, "at least 8")
        check(self.noise >= 0, "data.noise", self.noise, "a standard deviation >= 0")


SYNTHETIC_VERSION = "synthetic-v1"  # bump when the generator changes: it is part of the fingerprint


class SyntheticImages(ImageSource):
    """Image i of a seeded synthetic set, computed on demand from (seed, i) alone."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        n, s = cfg.n_classes, cfg.image_size
        rng = np.random.default_rng([cfg.seed, 0])
        self.blob_centres = rng.uniform(-0.6, 0.6, (n, 4, 2)).astype(np.float32)
        self.blob_widths = rng.uniform(0.12, 0.4, (n, 4)).astype(np.float32)
        self.blob_colours = rng.uniform(-160, 160, (n, 4, 3)).astype(np.float32)
        self.background = rng.uniform(40, 215, (n, 3)).astype(np.float32)
        self.grating = rng.uniform([4, 0, 10], [14, np.pi, 40], (n, 3)).astype(np.float32)
        grid = np.linspace(-1, 1, s, dtype=np.float32)
        self.y, self.x = np.meshgrid(grid, grid, indexing="ij")

    def __len__(self) -> int:
        return self.cfg.n_classes * self.cfg.images_per_class

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.cfg.image_size, self.cfg.image_size)

    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.cfg.n_classes), self.cfg.images_per_class)

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.atleast_1d(np.asarray(positions))
        s, out = self.cfg.image_size, np.empty((len(positions), self.cfg.image_size,
                                                self.cfg.image_size, 3), np.float32)
        for start in range(0, len(positions), 512):  # bounded temporaries for any request size
            chunk = positions[start:start + 512]
            c = chunk // self.cfg.images_per_class
            params = np.stack([np.random.default_rng([self.cfg.seed, 1, int(i)])
                               .uniform(0, 1, 5) for i in chunk])
            noise = np.stack([np.random.default_rng([self.cfg.seed, 2, int(i)])
                              .standard_normal((s, s, 3), np.float32) for i in chunk])
            shift = (params[:, :2, None, None] - 0.5).astype(np.float32) * 0.3
            scale = (0.8 + 0.4 * params[:, 2]).astype(np.float32)
            x, y = self.x - shift[:, 0], self.y - shift[:, 1]
            image = np.broadcast_to(self.background[c][:, None, None], (len(chunk), s, s, 3)).copy()
            for k in range(self.blob_centres.shape[1]):
                d2 = (x - self.blob_centres[c, k, 0, None, None]) ** 2 + \
                     (y - self.blob_centres[c, k, 1, None, None]) ** 2
                blob = np.exp(-d2 / (2 * self.blob_widths[c, k, None, None] ** 2))
                image += blob[..., None] * self.blob_colours[c, k][:, None, None]
            freq, angle, amp = (self.grating[c, j, None, None] for j in range(3))
            phase = (params[:, 3, None, None] * 2 * np.pi).astype(np.float32)
            wave = amp * np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
            image = image * scale[:, None, None, None] + wave[..., None]
            out[start:start + len(chunk)] = np.clip(image + self.cfg.noise * noise, 0, 255)
        return out

    def fingerprint(self) -> str:
        cfg = self.cfg
        return hashlib.sha256(f"{SYNTHETIC_VERSION} {cfg.n_classes} {cfg.images_per_class} "
                              f"{cfg.image_size} {cfg.noise} {cfg.seed}".encode()).hexdigest()


def load_synthetic_images(cfg: SyntheticConfig) -> LabelledImages:
    """Seeded Gaussian-blob-and-grating classes; images are generated when a split asks for them."""
    images = SyntheticImages(cfg)
    width = len(str(cfg.n_classes - 1))
    if source_size(cfg) > cfg.image_size:
        note_upscaling("synthetic", len(images), len(images), (cfg.image_size,) * 2,
                       source_size(cfg))
    return LabelledImages(images, images.labels(),
                          tuple(f"class{c:0{width}d}" for c in range(cfg.n_classes)))


register("synthetic", SyntheticConfig, load_synthetic_images)
