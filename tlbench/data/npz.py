"""Your arrays: x_train, y_train, optional x_test, y_test and class_names in one .npz."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import (
    ArrayImages,
    LabelledImages,
    note_upscaling,
    register,
    short_reason,
    source_size,
)
from tlbench.errors import TlbenchError, check
from tlbench.paths import sha256_of

log = logging.getLogger("tlbench")


@dataclass(kw_only=True)
class NpzConfig(DataConfig):
    """Arrays x_train, y_train, optional x_test, y_test and class_names in one .npz file."""

    path: str | None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.path), "data.path", self.path, "the .npz file to read")

    def content_digest(self) -> str | None:
        """sha256 of the .npz file."""
        path = Path(self.path).expanduser()
        return sha256_of(path) if path.is_file() else None


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
TEST_KEYS = ("x_test", "y_test")


PIXEL_RANGE = "tlbench expects pixels in 0..255 (uint8 range)"


def _rgb_uint8(x: np.ndarray, key: str, path: str) -> np.ndarray:
    """(N, H, W), (N, H, W, 1|3|4) pixels in [0, 255] as uint8 grey or RGB (alpha dropped)."""
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3]
    elif x.ndim != 3:
        raise TlbenchError(f"data.path={path}: {key} has shape {x.shape}; expected (N, H, W) or "
                           "(N, H, W, C) with C 1, 3 or 4.")
    _check_pixel_values(x, key, path)
    return x.astype(np.uint8)


def _check_pixel_values(x: np.ndarray, key: str, path: str) -> None:
    """Refuse NaN/inf pixels (naming the first bad image), pixels outside [0, 255] (mean-subtracted
    or standardised) and float pixels scaled to [0, 1]: each would train at chance, silently."""
    if not x.size or not np.issubdtype(x.dtype, np.number):
        return
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            raise TlbenchError(
                f"data.path={path}: {key} has NaN or inf pixels in {np.sum(~finite)} images "
                f"(the first is image {np.argmin(finite)}); {PIXEL_RANGE}: fix or drop them.")
    low, high = x.min(), x.max()
    if low < 0 or high > 255:
        raise TlbenchError(
            f"data.path={path}: {key} pixels range from {low:g} to {high:g}; {PIXEL_RANGE} "
            "(undo mean subtraction or standardisation, e.g. save (x - x.min()) / (x.max() - "
            "x.min()) * 255 as uint8).")
    if np.issubdtype(x.dtype, np.floating) and 0 < high <= 1.0:
        raise TlbenchError(
            f"data.path={path}: {key} pixels range from {low:g} to {high:g}, scaled to [0, 1]; "
            f"{PIXEL_RANGE}: save (x * 255).round().astype('uint8').")


def _read_array(archive, key: str, path: str) -> np.ndarray:
    """One array of the archive; an object array (ragged images, mixed items), which cannot be
    read without pickle, is one line saying how to store it instead."""
    try:
        return archive[key]
    except ValueError as exc:
        raise TlbenchError(
            f"data.path={path}: cannot read {key} ({short_reason(exc)}): it is an object array "
            "(images of different sizes, or mixed items); save images as one uint8 array "
            "(np.stack(images).astype('uint8'), resized to one size), labels as integers and "
            "class_names as np.array(names, dtype=str).") from None


def _class_ids(labels: np.ndarray, names: np.ndarray | None,
               path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class ids 0..k-1 and the class names: integer labels as they are (named by class_names,
    else by their ids); string labels are the names (class_names' order, else sorted)."""
    if labels.dtype.kind in "US":
        labels = labels.astype(str).tolist()
        known = [str(n) for n in names] if names is not None else sorted(set(labels))
        index = {name: i for i, name in enumerate(known)}
        unknown = sorted(set(labels) - index.keys())
        if unknown:
            raise TlbenchError(f"data.path={path}: labels {', '.join(map(repr, unknown[:5]))} "
                               "are not in class_names; name every class there, or leave "
                               "class_names out.")
        return np.array([index[label] for label in labels], dtype=np.int64), tuple(known)
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        low = f", min {labels.min()}" if np.issubdtype(labels.dtype, np.integer) else ""
        raise TlbenchError(f"data.path={path}: y_train/y_test must be integer class indices "
                           f"0..k-1 or class names as strings (got {labels.dtype}{low}).")
    if labels.size and labels.min() > 0:
        raise TlbenchError(
            f"data.path={path}: integer labels run from {labels.min()} to {labels.max()}, so "
            "class 0 has no image; tlbench reads them as class indices 0..k-1: save y - "
            f"{labels.min()}, or class names as strings.")
    n_classes = int(labels.max()) + 1
    if names is not None and len(names) != n_classes:
        raise TlbenchError(f"data.path={path}: class_names has {len(names)} names but the "
                           f"labels go up to {n_classes - 1}; give one name per class.")
    named = names if names is not None else range(n_classes)
    return labels.astype(np.int64), tuple(str(n) for n in named)


def _label_vector(y: np.ndarray, key: str, path: str) -> np.ndarray:
    """One label per image; a one-hot (N, k) array read as its class indices (argmax), and said."""
    if y.ndim != 2 or y.shape[1] < 2:
        return y.reshape(-1)
    if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
        raise TlbenchError(f"data.path={path}: {key} has shape {y.shape} but is not one-hot; give "
                           "one integer or string label per image, shape (N,).")
    log.info("data npz: %s is one-hot %s; read as class indices 0..%d (argmax)", key, y.shape,
             y.shape[1] - 1)
    return y.argmax(axis=1)


def _read_arrays(cfg: NpzConfig) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The archive's arrays (x_test/y_test only if it has both) and its class_names, if any."""
    path = Path(cfg.path).expanduser()
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TlbenchError(f"data.path={cfg.path!r}: cannot read it as an .npz file "
                           f"({short_reason(exc)}); save one with np.savez(path, x_train=..., "
                           "y_train=..., x_test=..., y_test=...).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TlbenchError(f"data.path={cfg.path}: a single .npy array, not an .npz archive; "
                           "save the four arrays in one file with np.savez(path, x_train=..., "
                           "y_train=..., x_test=..., y_test=...).")
    with archive:
        wanted = NPZ_KEYS if set(TEST_KEYS) & set(archive.files) else NPZ_KEYS[:2]
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise TlbenchError(f"data.path={cfg.path}: missing arrays {', '.join(missing)} (it "
                               f"has {', '.join(archive.files) or 'none'}); it needs "
                               "x_train, y_train and optionally x_test, y_test (both or neither).")
        arrays = {key: _read_array(archive, key, cfg.path) for key in wanted}
        names = _read_array(archive, "class_names", cfg.path) \
            if "class_names" in archive.files else None
    return arrays, names


def load_npz_images(cfg: NpzConfig) -> LabelledImages:
    """x_train, y_train, optional x_test, y_test and class_names from one .npz: its test split
    kept; without one, test is carved from train as for a folder without test/ (split.py)."""
    arrays, names = _read_arrays(cfg)
    splits = [key.removeprefix("x_") for key in arrays if key.startswith("x_")]
    if splits == ["train"]:
        log.info("data npz: no x_test/y_test; a stratified test split (data.test_fraction=%g) is "
                 "carved from x_train", cfg.test_fraction)
    images, labels = [], []
    for split in splits:
        x = _rgb_uint8(arrays[f"x_{split}"], f"x_{split}", cfg.path)
        y = _label_vector(arrays[f"y_{split}"], f"y_{split}", cfg.path)
        if len(x) != len(y):
            raise TlbenchError(f"data.path={cfg.path}: x_{split} has {len(x)} images but "
                               f"y_{split} has {len(y)} labels; they must match.")
        images.append(x)
        labels.append(y)
    if images[-1].shape[1:] != images[0].shape[1:]:
        raise TlbenchError(f"data.path={cfg.path}: x_train images are {images[0].shape[1:]} but "
                           f"x_test images are {images[-1].shape[1:]}; use one image shape.")
    ids, class_names = _class_ids(np.concatenate(labels), names, cfg.path)
    size = source_size(cfg)
    if min(images[0].shape[1:3]) < size:
        note_upscaling(f"npz {Path(cfg.path).name}", len(ids), len(ids),
                       images[0].shape[2:0:-1], size)
    given_test = np.arange(len(images[0]), len(ids)) if len(images) == 2 else None
    return LabelledImages(ArrayImages(np.concatenate(images), size), ids, class_names, given_test)


register("npz", NpzConfig, load_npz_images)
