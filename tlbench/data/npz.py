"""Your arrays: x_train, y_train, x_test, y_test (and optional class_names) in one .npz."""

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
    """Arrays x_train, y_train, x_test, y_test (and optional class_names) in one .npz file."""

    path: str | None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.path), "data.path", self.path, "the .npz file to read")

    def content_digest(self) -> str | None:
        """sha256 of the .npz file."""
        path = Path(self.path).expanduser()
        return sha256_of(path) if path.is_file() else None


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _rgb_uint8(x: np.ndarray, key: str, path: str) -> np.ndarray:
    """(N, H, W), (N, H, W, 1|3|4) pixels in [0, 255] as uint8 grey or RGB (alpha dropped)."""
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3]
    elif x.ndim != 3:
        raise TlbenchError(f"data.path={path}: {key} has shape {x.shape}; expected (N, H, W) or "
                           "(N, H, W, C) with C 1, 3 or 4.")
    if np.issubdtype(x.dtype, np.floating) and x.size and float(x.max()) <= 1.0:
        log.warning("data npz: %s looks scaled to [0, 1]; tlbench expects pixels in [0, 255]",
                    key)
    return np.clip(x, 0, 255).astype(np.uint8)


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
    n_classes = int(labels.max()) + 1
    if names is not None and len(names) != n_classes:
        raise TlbenchError(f"data.path={path}: class_names has {len(names)} names but the "
                           f"labels go up to {n_classes - 1}; give one name per class.")
    named = names if names is not None else range(n_classes)
    return labels.astype(np.int64), tuple(str(n) for n in named)


def load_npz_images(cfg: NpzConfig) -> LabelledImages:
    """x_train, y_train, x_test, y_test (optional class_names) from one .npz; test split kept."""
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
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise TlbenchError(f"data.path={cfg.path}: missing arrays {', '.join(missing)} (it "
                               f"has {', '.join(archive.files) or 'none'}); it needs "
                               f"{', '.join(NPZ_KEYS)}.")
        arrays = {key: _read_array(archive, key, cfg.path) for key in NPZ_KEYS}
        names = _read_array(archive, "class_names", cfg.path) \
            if "class_names" in archive.files else None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
        if len(x) != len(y):
            raise TlbenchError(f"data.path={cfg.path}: x_{split} has {len(x)} images but "
                               f"y_{split} has {len(y)} labels; they must match.")
    x_train = _rgb_uint8(arrays["x_train"], "x_train", cfg.path)
    x_test = _rgb_uint8(arrays["x_test"], "x_test", cfg.path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise TlbenchError(f"data.path={cfg.path}: x_train images are {x_train.shape[1:]} but "
                           f"x_test images are {x_test.shape[1:]}; use one image shape.")
    labels, class_names = _class_ids(
        np.concatenate([arrays["y_train"].reshape(-1), arrays["y_test"].reshape(-1)]), names,
        cfg.path)
    size = source_size(cfg)
    if min(x_train.shape[1:3]) < size:
        note_upscaling(f"npz {path.name}", len(labels), len(labels), x_train.shape[2:0:-1], size)
    return LabelledImages(ArrayImages(np.concatenate([x_train, x_test]), size), labels,
                          class_names, np.arange(len(x_train), len(labels)))


register("npz", NpzConfig, load_npz_images)
