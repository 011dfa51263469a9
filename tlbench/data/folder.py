"""Your image folder: class sub-folders (or train/ and test/ roots), decoded lazily."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlbench import runtime
from tlbench.config import DataConfig
from tlbench.data.source import (
    ImageSource,
    LabelledImages,
    note_upscaling,
    register,
    short_reason,
    source_size,
    to_uint8,
)
from tlbench.errors import TlbenchError, check, check_choice

log = logging.getLogger("tlbench")


ON_BAD_FILE = ("skip", "error")
FILE_CHECKS = ("header", "decode")


@dataclass(kw_only=True)
class FolderConfig(DataConfig):
    """Your images: `path/<class>/*.jpg|png|...`, or `path/train/<class>/` and `path/test/<class>/`.

    Images are read lazily, made RGB and resized to `input_size` (null: 224) when a split needs
    them. `on_bad_file`: skip unreadable or non-image files with one warning, or refuse naming the
    file. `check`: how files are checked when the folder is scanned (header: cheap; decode: each
    file is decoded once, which catches every truncated file).
    """

    path: str | None
    on_bad_file: str
    check: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.path), "data.path", self.path,
               "the folder holding one sub-folder per class")
        check_choice("data.on_bad_file", self.on_bad_file, ON_BAD_FILE)
        check_choice("data.check", self.check, FILE_CHECKS)

    def content_digest(self) -> str | None:
        """Relative paths, sizes and modification times of every file under the folder."""
        root = Path(self.path).expanduser()
        if not root.is_dir():
            return None
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n"
                          .encode())
        return digest.hexdigest()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _check_file(path: Path, decode: bool) -> tuple[int, int]:
    """(width, height) of a readable image, or raises with the reason it is not one.

    Header check: PIL identifies the format and size; PNG chunks are CRC-checked (no inflating);
    a JPEG without its end-of-image marker near the end (truncated, or with a long trailer) is
    decoded to decide. Decode check: every image is decoded once.
    """
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if image.format == "PNG" and not decode:
            image.verify()
        elif decode or (image.format == "JPEG" and not _ends_with_jpeg_marker(path)):
            image.load()  # PIL refuses truncated data ("image file is truncated")
    return width, height


def _ends_with_jpeg_marker(path: Path) -> bool:
    """Whether the file's last KiB holds a JPEG end-of-image marker (FF D9)."""
    with open(path, "rb") as raw:
        raw.seek(max(0, os.path.getsize(path) - 1024))
        return b"\xff\xd9" in raw.read()


class FolderImages(ImageSource):
    """Image files decoded on demand, as keras.utils.image_dataset_from_directory decodes them:
    TensorFlow's decoders (first frame of a GIF, alpha dropped, 16-bit scaled to 8) and its
    bilinear resize, in parallel; on JAX and PyTorch, where TensorFlow is not imported, Pillow's
    decoders (the same pixels, except JPEGs: Pillow's accurate DCT differs from TensorFlow's
    fast one by a few levels in some pixels) and the same resize."""

    def __init__(self, root: Path, files: list[Path], size: int) -> None:
        self.root, self.files, self.size = root, files, size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def decoder(self) -> str:
        """tensorflow on the TensorFlow backend, else pillow."""
        return "tensorflow" if runtime.backend() == "tensorflow" else "pillow"

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.atleast_1d(np.asarray(positions))
        out = np.empty((len(positions), self.size, self.size, 3), np.float32)
        order = {int(p): i for i, p in enumerate(positions)}
        for chunk, images in self.decode(positions, self.size):
            out[[order[int(p)] for p in chunk]] = images
        return out

    def decode(self, positions: np.ndarray,
               size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The files at `positions` decoded and resized to size x size, rounded to uint8, in
        chunks (in parallel on every core); at another size than data.input_size, decoded at
        that size first, then resized again."""
        if size != self.size:
            yield from super().decode(positions, size)
        elif self.decoder == "tensorflow":
            yield from self._tensorflow_decoded(positions, size)
        else:
            yield from self._pillow_decoded(positions, size)

    def _tensorflow_decoded(self, positions: np.ndarray,
                            size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """tf.data's parallel decode of image_dataset_from_directory; files it cannot decode
        are tried with Pillow afterwards (or refused, naming the file)."""
        import tensorflow as tf

        def load(position, path):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                       expand_animations=False)
            resized = tf.image.resize(image, (size, size), method="bilinear")
            return position, tf.cast(tf.round(resized), tf.uint8)

        paths = [str(self.files[int(p)]) for p in positions]
        dataset = tf.data.Dataset.from_tensor_slices((positions.astype(np.int64), paths)) \
            .map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors() \
            .batch(DECODE_BATCH).prefetch(1)
        decoded = np.zeros(len(self.files), dtype=bool)
        for chunk, images in dataset.as_numpy_iterator():
            decoded[chunk] = True
            yield chunk, images
        failed = positions[~decoded[positions]]
        if len(failed):
            yield from self._pillow_decoded(failed, size)

    def _pillow_decoded(self, positions: np.ndarray,
                        size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Pillow's decoders on a thread per core (they release the GIL), DECODE_BATCH files a
        chunk."""
        def load(position: int) -> np.ndarray:
            return to_uint8(resized_like_tensorflow(pillow_rgb(self.files[position]), size))

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for start in range(0, len(positions), DECODE_BATCH):
                chunk = positions[start:start + DECODE_BATCH]
                yield chunk, np.stack(list(pool.map(load, chunk.tolist())))

    def fingerprint(self) -> str:
        """Relative paths, sizes and modification times of the files, and the decode size."""
        digest = hashlib.sha256(f"folder {self.size}".encode())
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root)}|{stat.st_size}|{stat.st_mtime_ns}\n"
                          .encode())
        return digest.hexdigest()


DECODE_BATCH = 64  # files decoded per chunk written to the cache


def pillow_rgb(path: Path) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB, as TensorFlow's decoders give it: the first frame,
    alpha dropped, grey repeated, 16-bit grey scaled to 8 bits (Pillow's convert would clip it
    to white); a file Pillow cannot decode is refused, naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I"):  # 16-bit grey PNG: the high byte, as TensorFlow
                grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise TlbenchError(
            f"data.path: cannot decode {path} ({short_reason(exc)}) although its header "
            "looked fine; remove it, or set data.check=decode to find and skip every "
            "such file when the folder is scanned.") from None


def resized_like_tensorflow(image: np.ndarray, size: int) -> np.ndarray:
    """tf.image.resize's bilinear resize (half-pixel centres, no antialiasing) of one (H, W, C)
    image to size x size, float32, computed as its kernel computes it (equal to the bit)."""
    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = (np.arange(size, dtype=np.float32) + np.float32(0.5)) \
            * np.float32(n_in / size) - np.float32(0.5)
        lower = np.floor(source)
        low = np.clip(lower, 0, n_in - 1).astype(np.intp)
        high = np.clip(np.ceil(source), 0, n_in - 1).astype(np.intp)
        return low, high, (source - lower).astype(np.float32)

    pixels = image.astype(np.float32)
    (top, bottom, y), (left, right, x) = axis(image.shape[0]), axis(image.shape[1])
    x = x[None, :, None]
    upper = pixels[top][:, left] + (pixels[top][:, right] - pixels[top][:, left]) * x
    lower = pixels[bottom][:, left] + (pixels[bottom][:, right] - pixels[bottom][:, left]) * x
    return upper + (lower - upper) * y[:, None, None]


def _class_folders(root: Path) -> list[Path]:
    """The visible sub-folders of root, sorted by name (the class order)."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _scan_class(folder: Path, cfg: FolderConfig, bad: list[tuple[Path, str]],
                sizes: list[tuple[int, int]]) -> list[Path]:
    """The readable images under one class folder (recursively, sorted); bad files collected."""
    kept = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # .DS_Store, ._foo.jpg, .ipynb_checkpoints: never images
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            reason = f"not an image file ({path.suffix or 'no extension'})"
        else:
            try:
                sizes.append(_check_file(path, cfg.check == "decode"))
                kept.append(path)
                continue
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
                reason = short_reason(exc)
        if cfg.on_bad_file == "error":
            raise TlbenchError(f"data.path: {path} is not a readable image ({reason}); remove "
                               "it, or set data.on_bad_file=skip to skip such files.")
        bad.append((path, reason))
    return kept


def load_folder_images(cfg: FolderConfig) -> LabelledImages:
    """Class sub-folders of images, or train/ and test/ roots of them; files decoded lazily."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise TlbenchError(f"data.path={cfg.path!r}: no such folder; point data.path at a folder "
                           "with one sub-folder of images per class (path/<class>/*.jpg).")
    names = {p.name for p in _class_folders(root)}
    roots = [root / "train", root / "test"] if {"train", "test"} <= names else [root]
    if len(roots) == 2 and names - {"train", "test"}:
        log.warning("data folder: using %s/train and %s/test; ignoring %s", root, root,
                    ", ".join(sorted(names - {"train", "test"})))
    size, bad, sizes = source_size(cfg), [], []
    files, labels, classes, given_test = [], [], None, None
    for split_root in roots:
        folders = _class_folders(split_root)
        if not folders:
            loose = sum(1 for p in split_root.iterdir() if p.is_file())
            raise TlbenchError(
                f"data.path: {split_root} has no class sub-folders"
                + (f" ({loose} files directly in it)" if loose else " (it is empty)")
                + "; put each class's images in its own sub-folder, path/<class>/*.jpg.")
        found = tuple(p.name for p in folders)
        if len(found) < 2:  # before scanning: a huge single-class folder fails at once
            raise TlbenchError(f"data.path: only one class folder ({found[0]}) in {split_root}; "
                               "a classification benchmark needs at least two class sub-folders.")
        if classes is None:
            classes = found
        elif found != classes:
            raise TlbenchError(f"data.path: the class folders of {split_root} ({', '.join(found)})"
                               f" differ from those of {roots[0]} ({', '.join(classes)}); use the "
                               "same class folder names in train/ and test/.")
        start = len(files)
        for label, folder in enumerate(folders):
            kept = _scan_class(folder, cfg, bad, sizes)
            if not kept:
                raise TlbenchError(f"data.path: class folder {folder} has no readable images; "
                                   "add images (jpg, jpeg, png, bmp, gif, webp) or remove it.")
            files += kept
            labels += [label] * len(kept)
        if split_root.name == "test" and len(roots) == 2:
            given_test = np.arange(start, len(files))
    if bad:
        log.warning("data folder: skipped %d unreadable or non-image files, e.g. %s (%s); "
                    "data.on_bad_file=error refuses them instead", len(bad), bad[0][0], bad[0][1])
    small = [s for s in sizes if min(s) < size]
    note_upscaling(f"folder {root}", len(small), len(sizes),
                   min(small, key=min, default=(0, 0)), size)
    return LabelledImages(FolderImages(root, files, size), np.asarray(labels, np.int64), classes,
                          given_test)


register("folder", FolderConfig, load_folder_images)
