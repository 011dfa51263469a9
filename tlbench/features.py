"""Frozen-computation cache: what a frozen base computes over an image is computed once.

A frozen base in inference mode is a pure function of its input, so its pooled features (for
feature extraction and the linear probe) and its activations at a partial fine-tune's cut are
cached on disk. An entry is keyed by backbone, a digest of the actual weights, the dataset's
fingerprint, the input size, the preprocessing and the tap (pooled output or cut layer). It holds
one row per source image; a small source is filled whole on its first miss, a large one on demand,
so a sweep forwards each image at most once per backbone and weights, whatever the subset sizes,
seeds and heads. A file lock per entry makes concurrent workers compute a row once; rows are
marked done (atomically) only after they are on disk, so a killed worker leaves nothing
half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from tlbench import paths
from tlbench.backbone import BackboneSpec, preprocess
from tlbench.config import CacheConfig
from tlbench.data import Dataset, LabelledImages, Splits, resize
from tlbench.errors import TlbenchError

if TYPE_CHECKING:
    from tlbench.base_facts import BaseFacts

log = logging.getLogger("tlbench")

FORMAT = 2  # bump when what a row holds changes, so old entries are not reused
POOLED = "pooled"
CHUNK = 256  # images resized, preprocessed and forwarded together
FILL_BYTES = 1 << 30  # a whole-source fill never writes more than this (e.g. large cut activations)


def cache_root(cfg: CacheConfig) -> Path | None:
    """cache.dir, else $TLBENCH_CACHE/features, else ~/.cache/tlbench/features; None if off."""
    return paths.cache_dir("features", cfg.dir) if cfg.enabled else None


def weights_digest(model) -> str:
    """sha256 of every weight (names and values, moving statistics included) of the model."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def entry_key(spec: BackboneSpec, weights: str, source: str, input_size: int, tap: str,
              precision: str) -> dict:
    """Everything that determines a cached row."""
    return {"format": FORMAT, "backbone": spec.name, "weights_sha256": weights,
            "data_fingerprint": source, "input_size": input_size,
            "preprocess": list(spec.preprocessed_range), "tap": tap, "precision": precision}


def entry_dir(root: Path, key: dict) -> Path:
    """The entry's folder: readable prefix, then a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{key['backbone']}-{key['input_size']}px-{key['tap']}-{digest}"


def extractor(base, spec: BackboneSpec, *taps: str):
    """The frozen computation: for each tap, the pooled (or flattened) base output, or the
    output of the layer it names."""
    import keras

    def output(tap: str):
        if tap != POOLED:
            return base.get_layer(tap).output
        pool = keras.layers.Flatten() if spec.features == "flat" else \
            keras.layers.GlobalAveragePooling2D()
        return pool(base.output)

    outputs = [output(tap) for tap in taps]
    return keras.Model(base.input, outputs if len(outputs) > 1 else outputs[0])


def forward(model, spec: BackboneSpec, source: LabelledImages, positions: np.ndarray,
            input_size: int, batch_size: int) -> list[np.ndarray]:
    """Resize, preprocess and run the frozen model over source images, a chunk at a time: one
    array per output of the model."""
    chunks = []
    for start in range(0, len(positions), CHUNK):
        images = resize(source.images[positions[start:start + CHUNK]], input_size)
        outputs = model.predict(preprocess(spec, images), batch_size=batch_size, verbose=0)
        chunks.append(outputs if isinstance(outputs, list) else [outputs])
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*chunks, strict=True)]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save through a synced temporary file and os.replace: readers see the old or the new
    file, and a failed write (a full disk) leaves the old one and no temporary behind."""
    temporary = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _row_layout(path: Path, n_rows: int) -> tuple[int, tuple[int, ...]] | None:
    """The row file's data offset and row shape if it holds n_rows float32 rows and is as long as
    its header says; None when missing, unreadable, truncated (an interrupted copy) or other."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as handle:
            shape, fortran, dtype = readers[np.lib.format.read_magic(handle)](handle)
            offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError, EOFError, KeyError):
        return None
    whole = size == offset + 4 * int(np.prod(shape))
    if not whole or fortran or dtype != np.float32 or not shape or shape[0] != n_rows:
        return None
    return offset, tuple(shape[1:])


def _entry_state(folder: Path, n_rows: int) -> tuple[np.ndarray, tuple | None]:
    """The done mask and the row file's layout when the rows are whole and of the row shape that
    key.json records; else an empty mask (the entry is rebuilt, rows and mask together), so a
    row is served only if it was computed."""
    layout = _row_layout(folder / "rows.npy", n_rows)
    done = np.zeros(n_rows, dtype=bool)
    try:
        recorded = json.loads((folder / "key.json").read_text()).get("row_shape")
        saved = np.load(folder / "done.npy")
    except (OSError, ValueError, EOFError, AttributeError):
        return done, None
    if recorded is None:
        log.info("feature cache %s: written by an older tlbench; rebuilding it once", folder)
        return done, None
    if layout is None or tuple(recorded) != layout[1] or saved.shape != done.shape or \
            saved.dtype != bool:
        if saved.any():
            log.warning("feature cache %s: rows and mask disagree (an interrupted copy?); "
                        "rebuilding the entry", folder)
        return done, None
    return saved, layout


def _open_rows(path: Path, n_rows: int, row_shape: tuple[int, ...]) -> int:
    """A new, sparse row file for n_rows float32 rows; returns where its data starts."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (n_rows, *row_shape)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        offset = handle.tell()
        handle.truncate(offset + 4 * n_rows * int(np.prod(row_shape)))
    return offset


def _write_rows(path: Path, offset: int, positions: np.ndarray, rows: np.ndarray) -> None:
    """Rows written in place with plain, synced writes (a full disk raises OSError here, where a
    memory map would crash the process)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    row_bytes = rows[0].nbytes
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    with open(path, "r+b") as handle:
        for start, stop in zip([0, *breaks], [*breaks, len(positions)], strict=True):
            handle.seek(offset + int(positions[start]) * row_bytes)
            handle.write(rows[start:stop].tobytes())
        handle.flush()
        os.fsync(handle.fileno())


def cached_rows(folder: Path | None, key: dict | None, positions: np.ndarray, n_rows: int,
                compute: Callable[[np.ndarray], np.ndarray],
                fill: np.ndarray | None = None) -> tuple[np.ndarray, int, float]:
    """Rows at `positions`, computing only those not cached yet (and, on a miss, those of `fill`
    too). Returns the rows, how many were computed, and the seconds spent waiting for another
    worker's lock. A truncated or mismatched entry is rebuilt, rows and mask together; a failed
    write (a full disk) raises TlbenchError and leaves the entry consistent."""
    if folder is None:
        return compute(positions), len(positions), 0.0
    folder.mkdir(parents=True, exist_ok=True)
    waited = time.perf_counter()
    with FileLock(str(folder) + ".lock"):
        waited = time.perf_counter() - waited
        done_path, rows_path = folder / "done.npy", folder / "rows.npy"
        done, layout = _entry_state(folder, n_rows)
        missing = positions[~done[positions]]
        if len(missing) and fill is not None:
            missing = np.union1d(missing, fill[~done[fill]])
        computed = len(missing)
        if len(missing):
            started = time.perf_counter()
            new = compute(missing)
            if layout is None or layout[1] != new.shape[1:]:
                if done.any():  # rows of another shape: recompute the ones this run reads too
                    log.warning("feature cache %s: rows of another shape; rebuilding", folder)
                    again = positions[done[positions]]
                    order = np.argsort(np.concatenate([missing, again]))
                    new = np.concatenate([new, compute(again)])[order]
                    missing = np.concatenate([missing, again])[order]
                    computed, done = len(missing), np.zeros(n_rows, dtype=bool)
                layout = None
            try:
                if layout is None:
                    done_path.unlink(missing_ok=True)  # never a mask without its rows
                    layout = (_open_rows(rows_path, n_rows, new.shape[1:]), new.shape[1:])
                _write_rows(rows_path, layout[0], missing, new)
                done[missing] = True
                rate = (time.perf_counter() - started) / computed
                recorded = key | {"row_shape": list(layout[1]), "seconds_per_row": rate}
                (folder / "key.json").write_text(json.dumps(recorded, indent=2, sort_keys=True)
                                                 + "\n")
                _atomic_save(done_path, done)
            except OSError as exc:
                raise TlbenchError(
                    f"feature cache {folder}: cannot write ({exc.strerror or exc}); free space "
                    "there, set cache.dir to another folder, or cache.enabled=false") from None
        assert done[positions].all(), "a feature row was about to be served uncomputed"
        rows = np.load(rows_path, mmap_mode="r")
        return np.array(rows[positions]), computed, waited


def seconds_per_row(folder: Path) -> float:
    """What computing one row of a cache entry took when it was filled (0 if not recorded)."""
    try:
        return float(json.loads((folder / "key.json").read_text()).get("seconds_per_row", 0.0))
    except (OSError, ValueError):
        return 0.0


@dataclass(frozen=True)
class Frozen:
    """A frozen tap's outputs as a dataset (arrays in place of images) and what they cost.

    `seconds`: this run's time getting them (a fill, or a read); `cost`: the rows it used times
    the measured seconds per row, the same for every run that uses them, whichever filled them.
    """

    data: Dataset
    computed: int
    seconds: float
    waited: float
    cost: float


def frozen_datasets(base, spec: BackboneSpec, source: LabelledImages, splits: Splits,
                    input_size: int, taps: list[str], root: Path | None, batch_size: int,
                    fill_limit: int = 0, facts: BaseFacts | None = None) -> list[Frozen]:
    """Each tap's outputs for this run's train, val and test images, from the cache if there.

    `base` is the frozen network, or a function that builds it, called only when rows must be
    computed: with `facts` (its recorded weights digest and precision, which key the cache), a
    run whose rows are all cached never builds it. The data fingerprint (and the weights digest
    without `facts`) is computed once for all taps, and only when there is a cache to key. On a
    miss, a source of at most `fill_limit` images (and FILL_BYTES of rows) is filled whole: one
    forward pass then serves every size and seed of a sweep. Larger ones are filled on demand.
    """
    start = time.perf_counter()
    built = {} if getattr(base, "weights", None) is None else {"base": base}

    def model(*tapped: str):
        if tapped not in built:
            built[tapped] = extractor(model_base(built, base), spec, *tapped)
        return built[tapped]

    identity = None
    if root is not None:
        identity = (facts.weights_sha256, source.fingerprint(), facts.precision) if facts else \
            (weights_digest(model_base(built, base)), source.fingerprint(),
             model_base(built, base).dtype_policy.name)
    positions = np.unique(np.concatenate([splits.train, splits.val, splits.test]))
    n_rows = len(source.labels)

    def take(rows: np.ndarray, split: np.ndarray) -> np.ndarray:
        return rows[np.searchsorted(positions, split)]

    keys = {tap: None if identity is None else
            entry_key(spec, identity[0], identity[1], input_size, tap, identity[2])
            for tap in taps}
    folders = {tap: None if key is None else entry_dir(root, key) for tap, key in keys.items()}

    def row_bytes(tap: str) -> int:
        return 4 * int(np.prod(model(tap).output.shape[1:]))

    whole = {tap: n_rows <= fill_limit and (covers(folders[tap], positions, n_rows) or
                                            n_rows * row_bytes(tap) <= FILL_BYTES)
             for tap in taps}
    ahead: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def joins(tap: str, later: str, missing: np.ndarray) -> bool:
        """Whether `later` will ask for exactly the rows `tap` computes (its entry holds none
        of them, and it fills alike), few enough to keep until then (FILL_BYTES)."""
        folder = folders[later]
        empty = folder is None or not _entry_state(folder, n_rows)[0][missing].any()
        return empty and whole[later] == whole[tap] and \
            len(missing) * row_bytes(later) <= FILL_BYTES

    def compute(tap: str, missing: np.ndarray) -> np.ndarray:
        """The tap's rows at `missing`: computed ahead by an earlier tap's forward pass, or by
        one pass that also computes them for the later taps that will ask for the same rows."""
        rows = ahead.pop(tap, None)
        if rows is not None and np.array_equal(rows[0], missing):
            return rows[1]
        joint = [tap, *(t for t in taps[taps.index(tap) + 1:] if joins(tap, t, missing))]
        outputs = forward(model(*joint), spec, source, missing, input_size, batch_size)
        ahead.update((t, (missing, rows)) for t, rows in zip(joint[1:], outputs[1:],
                                                              strict=True))
        return outputs[0]

    results = []
    for tap in taps:
        key, folder = keys[tap], folders[tap]
        rows, computed, waited = cached_rows(
            folder, key, positions, n_rows, lambda missing, tap=tap: compute(tap, missing),
            fill=np.arange(n_rows) if whole[tap] else None)
        data = Dataset(take(rows, splits.train), source.labels[splits.train],
                       take(rows, splits.val), source.labels[splits.val],
                       take(rows, splits.test), source.labels[splits.test], source.class_names)
        seconds = time.perf_counter() - start - waited
        rate = seconds_per_row(folder) if folder else seconds / len(positions)
        log.info("frozen %s of %s: %d rows used, %d computed (%.1fs)%s", tap, spec.name,
                 len(positions), computed, seconds,
                 f" in {folder}" if folder else " (cache off)")
        results.append(Frozen(data, computed, seconds, waited, rate * len(positions)))
        start = time.perf_counter()
    return results


def model_base(built: dict, base):
    """The base network, built now if `base` is its builder."""
    if "base" not in built:
        built["base"] = base()
    return built["base"]


def covers(folder: Path | None, positions: np.ndarray, n_rows: int) -> bool:
    """Whether the cache entry holds every row at `positions` (read without its lock: a hint)."""
    if folder is None or not (folder / "done.npy").is_file():
        return False
    done, layout = _entry_state(folder, n_rows)
    return layout is not None and bool(done[positions].all())


def frozen_dataset(base, spec: BackboneSpec, source: LabelledImages, splits: Splits,
                   input_size: int, tap: str, root: Path | None, batch_size: int,
                   fill_limit: int = 0, facts: BaseFacts | None = None) -> Frozen:
    """One tap's outputs (see frozen_datasets)."""
    return frozen_datasets(base, spec, source, splits, input_size, [tap], root, batch_size,
                           fill_limit, facts)[0]
