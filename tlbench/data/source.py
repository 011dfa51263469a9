"""What every data source returns: labelled images behind one interface, and shared helpers.

A source's images are an `ImageSource`: `len()`, `[positions]` giving (n, H, W, 3) float32 RGB in
[0, 255] for just those images (decoded or generated on demand where the source streams),
`decode(positions, size)` giving them as uint8 at the backbone's input size a chunk at a time
(what the decoded-image cache stores), and `fingerprint()` identifying the content (the caches'
dataset key).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tlbench import registry
from tlbench.config import DataConfig

log = logging.getLogger("tlbench")
DEFAULT_DECODE_SIZE = 224
"""Side images are decoded at when data.input_size is null (the backbones' default input)."""


class ImageSource(ABC):
    """Images served by position, with a content fingerprint."""

    decoder: ClassVar[str] = "resize"
    """How `decode` makes its pixels (part of the decoded-image cache's key)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, positions) -> np.ndarray:
        """The images at `positions` as (n, H, W, 3) float32 RGB in [0, 255]."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest that changes whenever the served images change."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of every served image."""

    def sizes_text(self, input_size: int) -> str:
        """The sizes a run's images have: as served and as the backbone sees them, e.g. 'images
        decoded at 224x224, resized to 32x32 for the backbone (backbone.input_size)'."""
        height, width = self.image_shape
        if (height, width) == (input_size, input_size):
            return f"images {width}x{height}, as the backbone sees them"
        return (f"images decoded at {width}x{height}, resized to {input_size}x{input_size} for "
                "the backbone (backbone.input_size)")

    def decode(self, positions: np.ndarray,
               size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The images at `positions` as (n, size, size, 3) uint8, in (positions, images) chunks:
        resized as tf.image.resize does (bilinear, half-pixel centres, no antialiasing) and
        rounded to the nearest level."""
        for start in range(0, len(positions), DECODE_CHUNK):
            chunk = positions[start:start + DECODE_CHUNK]
            yield chunk, to_uint8(resize(self[chunk], size))


class ArrayImages(ImageSource):
    """In-memory images (N, H, W) grey or (N, H, W, 3) RGB in [0, 255], served as float32 RGB,
    resized to `size` if given."""

    def __init__(self, pixels: np.ndarray, size: int | None = None) -> None:
        self.pixels = pixels
        self.size = size

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, positions) -> np.ndarray:
        chosen = self.pixels[np.asarray(positions)].astype(np.float32)
        if chosen.ndim == 3:
            chosen = np.repeat(chosen[..., None], 3, axis=-1)
        return chosen if self.size is None else resize(chosen, self.size)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.size, self.size) if self.size else self.pixels.shape[1:3]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(str((self.pixels.shape, self.size)).encode())
        digest.update(np.ascontiguousarray(self.pixels).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class LabelledImages:
    """A whole source: images (N, H, W, 3) in [0, 255], integer labels and class names.

    `images` serves just the images asked for: large sources are never loaded whole.
    """

    images: ImageSource
    labels: np.ndarray
    class_names: tuple[str, ...]
    given_test: np.ndarray | None = None
    """Positions of the source's own test split (test/ folder, x_test, TFDS test split), if any."""
    given_val: np.ndarray | None = None
    """Positions of the source's own validation split (TFDS data.val_split), if any."""

    def fingerprint(self) -> str:
        """A digest of the images, labels and class names: the feature cache's dataset key."""
        return self._fingerprint

    def image_digests(self, positions: np.ndarray) -> list[str]:
        """sha256 of each image at `positions`, its pixels rounded to uint8 as served."""
        return [hashlib.sha256(np.round(image).astype(np.uint8).tobytes()).hexdigest()
                for start in range(0, len(positions), 256)
                for image in self.images[positions[start:start + 256]]]

    @functools.cached_property
    def _fingerprint(self) -> str:
        """fingerprint(), computed once per loaded source."""
        digest = hashlib.sha256()
        digest.update(self.images.fingerprint().encode())
        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        digest.update("\n".join(self.class_names).encode())
        if self.given_test is not None:
            digest.update(b"given test split" + np.asarray(self.given_test, np.int64).tobytes())
        if self.given_val is not None:
            digest.update(b"given val split" + np.asarray(self.given_val, np.int64).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class DataSource:
    """A registered source: its config class and the loader that turns a config into images."""

    Config: type[DataConfig]
    load: Callable[[DataConfig], LabelledImages]


def register(name: str, config: type[DataConfig],
             load: Callable[[DataConfig], LabelledImages]) -> None:
    """Make `data=<name>` load with `load`, its settings typed by `config`."""
    registry.SOURCES.register(name, DataSource(config, load))


def source_size(cfg: DataConfig) -> int:
    """The side a source's images are decoded or resized to: data.input_size, else 224."""
    return cfg.input_size or DEFAULT_DECODE_SIZE


def note_upscaling(source: str, small: int, total: int, smallest: tuple[int, int],
                   size: int) -> None:
    """One log line per source when some of its images are smaller than the side they are
    decoded at (data.input_size); what the backbone sees is stated by prepare's data line."""
    if small:
        log.info("data %s: %d of %d images are smaller than %dx%d (smallest %dx%d); "
                 "they are upscaled to %dx%d when decoded (data.input_size)", source, small,
                 total, size, size, smallest[0], smallest[1], size, size)


def short_reason(exc: BaseException) -> str:
    """A short, one-line reason from an exception: its first sentence, at most 160 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "..."


RESIZE_CHUNK = 1024  # images resized together: bounds the float32 copy on the backend
DECODE_CHUNK = 256  # images decoded together into the cache: bounds the float32 copies


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pixels in [0, 255] rounded to the nearest uint8 level."""
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, no antialiasing: tf.image.resize's) to size x size,
    float32 in [0, 255], on the Keras backend, RESIZE_CHUNK images at a time."""
    import keras

    if images.shape[1:3] == (size, size):
        return images.astype(np.float32)
    resized = np.empty((len(images), size, size, images.shape[3]), dtype=np.float32)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start:start + RESIZE_CHUNK].astype(np.float32)
        out = keras.ops.image.resize(chunk, (size, size), interpolation="bilinear",
                                     antialias=False, data_format="channels_last")
        resized[start:start + RESIZE_CHUNK] = keras.ops.convert_to_numpy(out)
    return np.clip(resized, 0.0, 255.0)
