"""Your arrays: x_train, y_train, optional x_test, y_test and class_names in one .npz."""

from __future__ import annotations

import hashlib
import logging
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlbench import paths
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
from tlbench.progress import reported
from tlbench.rowcache import RowFile, cached_rows

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


class StoredPixels:
    """x_train then x_test as one (N, H, W) grey or (N, H, W, 3) RGB uint8 array, read by
    position from a file (`RowFile`: the .npz, or a compressed member's extraction), a
    Fortran-ordered member from memory; (N, H, W, 1) read as grey, alpha dropped, values cast to
    uint8 (as np.astype casts: floats truncated)."""

    def __init__(self, parts: list[RowFile | np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [_shape(part)[0] for part in parts])
        self.shape = (int(self.starts[-1]), *_image_shape(_shape(parts[0])))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.atleast_1d(np.asarray(positions, np.int64))
        out = np.empty((len(positions), *self.shape[1:]), np.uint8)
        part_of = np.searchsorted(self.starts, positions, side="right") - 1
        for i, part in enumerate(self.parts):
            mine = np.flatnonzero(part_of == i)
            if len(mine):
                out[mine] = _channels(_rows(part, positions[mine] - self.starts[i]))
        return out


def _shape(part: RowFile | np.ndarray) -> tuple[int, ...]:
    """The whole array's shape, rows first."""
    return (part.n_rows, *part.row_shape) if isinstance(part, RowFile) else part.shape


def _rows(part: RowFile | np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The rows of an array at `positions`, read from the file or memory."""
    return part.read(positions) if isinstance(part, RowFile) else part[positions]


def _image_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(H, W) or (H, W, 3) of one image as served, from the stored array's shape."""
    return shape[1:3] if len(shape) == 3 or shape[-1] == 1 else (*shape[1:3], 3)


def _channels(x: np.ndarray) -> np.ndarray:
    """(n, H, W, 1) as grey (n, H, W), (n, H, W, 4) without alpha."""
    if x.ndim == 4:
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3]
    return x


def _check_shape(shape: tuple[int, ...], key: str, path: str) -> None:
    """(N, H, W) or (N, H, W, C) with C 1, 3 or 4, else one line naming the shape."""
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4))):
        raise TlbenchError(f"data.path={path}: {key} has shape {shape}; expected (N, H, W) or "
                           "(N, H, W, C) with C 1, 3 or 4.")


CHECK_CHUNK = 1024  # images whose values are checked together: bounds the memory of the checks


def _check_pixel_values(part: RowFile | np.ndarray, key: str, path: str) -> None:
    """Refuse NaN/inf pixels (naming the first bad image), pixels outside [0, 255] (mean-subtracted
    or standardised) and float pixels scaled to [0, 1]: each would train at chance, silently.
    The images are read CHECK_CHUNK at a time, so memory stays flat in the array's size."""
    shape, dtype = _shape(part), part.dtype
    if not np.prod(shape) or not np.issubdtype(dtype, np.number):
        return
    bad, first, low, high = 0, None, np.inf, -np.inf
    for start in range(0, shape[0], CHECK_CHUNK):
        x = _channels(_rows(part, np.arange(start, min(start + CHECK_CHUNK, shape[0]))))
        if np.issubdtype(dtype, np.floating):
            finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
            bad += int(np.sum(~finite))
            first = start + int(np.argmin(finite)) if first is None and not finite.all() \
                else first
            x = x[finite]
        if x.size:
            low, high = min(low, x.min()), max(high, x.max())
    if bad:
        raise TlbenchError(
            f"data.path={path}: {key} has NaN or inf pixels in {bad} images "
            f"(the first is image {first}); {PIXEL_RANGE}: fix or drop them.")
    if low < 0 or high > 255:
        raise TlbenchError(
            f"data.path={path}: {key} pixels range from {low:g} to {high:g}; {PIXEL_RANGE} "
            "(undo mean subtraction or standardisation, e.g. save (x - x.min()) / (x.max() - "
            "x.min()) * 255 as uint8).")
    if np.issubdtype(dtype, np.floating) and 0 < high <= 1.0:
        raise TlbenchError(
            f"data.path={path}: {key} pixels range from {low:g} to {high:g}, scaled to [0, 1]; "
            f"{PIXEL_RANGE}: save (x * 255).round().astype('uint8').")


def _npy_header(handle) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the .npy header at the handle's position."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    return readers[np.lib.format.read_magic(handle)](handle)


def _stored_rows(archive, key: str, path: Path) -> RowFile:
    """An uncompressed member's rows where they lie in the file (a zip member's data follows
    its 30-byte local header, file name and extra field, then the .npy header)."""
    info = archive.zip.getinfo(f"{key}.npy")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        shape, _, dtype = _npy_header(handle)
        offset = handle.tell()
    return RowFile(path, offset, shape[0], tuple(shape[1:]), dtype)


FORMAT = 1  # bump when what an extracted row holds changes, so old entries are not reused
EXTRACT_BYTES = 4 * 2**20  # bytes decompressed at a time: bounds the memory of an extraction


def _extracted_rows(archive, key: str, path: str, digest: str, shape: tuple[int, ...],
                    dtype: np.dtype) -> RowFile:
    """A compressed member's rows, extracted once into $TLBENCH_CACHE/npz (keyed by the file's
    sha256 and the member) a chunk at a time; later loads and other workers read them there."""
    entry = {"format": FORMAT, "npz_sha256": digest, "member": key}
    folder = paths.cache_dir("npz") / f"{Path(path).stem}-{key}-{digest[:16]}"
    n_rows = shape[0]

    def extract(missing: np.ndarray):
        what = f"extracting {key} of {Path(path).name} into {folder}"
        return reported(_member_rows(archive, key, shape, dtype, missing), len(missing), what)

    try:
        rows, computed, _ = cached_rows(folder, entry, np.arange(n_rows), n_rows, extract,
                                        dtype=dtype, what="npz cache")
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise TlbenchError(f"data.path={path}: cannot read {key} ({short_reason(exc)}): the "
                           "file is damaged; save it again.") from None
    if computed:
        log.info("data npz: %s is stored compressed; extracted its %.1f MiB once into %s, "
                 "from where its images are read", key, n_rows * rows.row_bytes / 2**20, folder)
    return rows


def _member_rows(archive, key: str, shape: tuple[int, ...], dtype: np.dtype,
                 positions: np.ndarray):
    """(positions, rows) of a C-ordered member at `positions`, decompressed from its stream
    EXTRACT_BYTES at a time; read to the end, so that the zip's CRC is checked."""
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    per_chunk = max(1, EXTRACT_BYTES // row_bytes)
    wanted = np.zeros(shape[0], dtype=bool)
    wanted[positions] = True
    with archive.zip.open(f"{key}.npy") as stream:
        _npy_header(stream)
        for start in range(0, shape[0], per_chunk):
            chunk = np.arange(start, min(start + per_chunk, shape[0]))
            data = stream.read(len(chunk) * row_bytes)
            if len(data) < len(chunk) * row_bytes:
                raise EOFError(f"{key}.npy ends at row {start + len(data) // row_bytes}")
            if wanted[chunk].any():
                rows = np.frombuffer(data, dtype).reshape(len(chunk), *shape[1:])
                yield chunk[wanted[chunk]], rows[wanted[chunk]]
        stream.read()


def _pixels(archive, key: str, path: str, digest: str) -> RowFile | np.ndarray:
    """x_train or x_test, read by position from a file: the .npz where the member is stored
    uncompressed (np.savez), else its extraction in the cache (np.savez_compressed). A
    Fortran-ordered member is read whole, with a log line giving its size; an object or empty
    one is read whole too (and refused, or costs nothing)."""
    with archive.zip.open(f"{key}.npy") as stream:
        shape, fortran, dtype = _npy_header(stream)
    if dtype.hasobject or not shape or not np.prod(shape):
        return _read_array(archive, key, path)
    if fortran:
        x = _read_array(archive, key, path)
        log.info("data npz: %s is Fortran-ordered, so its %.0f MiB are read into memory; save "
                 "np.ascontiguousarray(%s) to read images from the file as they are needed",
                 key, x.nbytes / 2**20, key)
        return x
    if archive.zip.getinfo(f"{key}.npy").compress_type == zipfile.ZIP_STORED:
        return _stored_rows(archive, key, Path(path).expanduser())
    return _extracted_rows(archive, key, path, digest, shape, dtype)


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


def _read_arrays(cfg: NpzConfig,
                 digest: str) -> tuple[dict[str, RowFile | np.ndarray], np.ndarray | None]:
    """The archive's arrays (x_test/y_test only if it has both; images read by position from a
    file, see `_pixels`) and its class_names, if any; `digest` is the file's sha256."""
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
        arrays = {key: _pixels(archive, key, cfg.path, digest) if key.startswith("x_")
                  else _read_array(archive, key, cfg.path) for key in wanted}
        names = _read_array(archive, "class_names", cfg.path) \
            if "class_names" in archive.files else None
    return arrays, names


def load_npz_images(cfg: NpzConfig) -> LabelledImages:
    """x_train, y_train, optional x_test, y_test and class_names from one .npz: its test split
    kept; without one, test is carved from train as for a folder without test/ (split.py)."""
    digest = cfg.content_digest()
    arrays, names = _read_arrays(cfg, digest)
    splits = [key.removeprefix("x_") for key in arrays if key.startswith("x_")]
    if splits == ["train"]:
        log.info("data npz: no x_test/y_test; a stratified test split (data.test_fraction=%g) is "
                 "carved from x_train", cfg.test_fraction)
    parts, labels = [], []
    for split in splits:
        x = arrays[f"x_{split}"]
        _check_shape(_shape(x), f"x_{split}", cfg.path)
        _check_pixel_values(x, f"x_{split}", cfg.path)
        y = _label_vector(arrays[f"y_{split}"], f"y_{split}", cfg.path)
        if _shape(x)[0] != len(y):
            raise TlbenchError(f"data.path={cfg.path}: x_{split} has {_shape(x)[0]} images but "
                               f"y_{split} has {len(y)} labels; they must match.")
        parts.append(x)
        labels.append(y)
    shapes = [_image_shape(_shape(part)) for part in parts]
    if shapes[-1] != shapes[0]:
        raise TlbenchError(f"data.path={cfg.path}: x_train images are {shapes[0]} but "
                           f"x_test images are {shapes[-1]}; use one image shape.")
    ids, class_names = _class_ids(np.concatenate(labels), names, cfg.path)
    size = source_size(cfg)
    if min(shapes[0][:2]) < size:
        note_upscaling(f"npz {Path(cfg.path).name}", len(ids), len(ids), shapes[0][1::-1], size)
    given_test = np.arange(_shape(parts[0])[0], len(ids)) if len(parts) == 2 else None
    images = NpzImages(StoredPixels(parts), size, digest)
    return LabelledImages(images, ids, class_names, given_test)


class NpzImages(ArrayImages):
    """An .npz's images, read by position (`StoredPixels`), resized to the source size."""

    def __init__(self, pixels: StoredPixels, size: int, file_digest: str) -> None:
        super().__init__(pixels, size)
        self.file_digest = file_digest

    def fingerprint(self) -> str:
        """The .npz file's sha256, with the size its images are resized to."""
        return hashlib.sha256(f"npz {self.size} {self.file_digest}".encode()).hexdigest()


register("npz", NpzConfig, load_npz_images)
