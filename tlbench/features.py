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

import numpy as np
from filelock import FileLock

from tlbench import paths
from tlbench.backbone import BackboneSpec, preprocess
from tlbench.config import CacheConfig
from tlbench.data import Dataset, LabelledImages, Splits, resize

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


def entry_key(spec: BackboneSpec, weights: str, source: str, input_size: int, tap: str) -> dict:
    """Everything that determines a cached row."""
    return {"format": FORMAT, "backbone": spec.name, "weights_sha256": weights,
            "data_fingerprint": source, "input_size": input_size,
            "preprocess": list(spec.preprocessed_range), "tap": tap}


def entry_dir(root: Path, key: dict) -> Path:
    """The entry's folder: readable prefix, then a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{key['backbone']}-{key['input_size']}px-{key['tap']}-{digest}"


def extractor(base, spec: BackboneSpec, tap: str):
    """The frozen computation: the pooled (or flattened) base output, or the output at `tap`."""
    import keras

    if tap != POOLED:
        return keras.Model(base.input, base.get_layer(tap).output)
    pool = keras.layers.Flatten() if spec.features == "flat" else \
        keras.layers.GlobalAveragePooling2D()
    return keras.Model(base.input, pool(base.output))


def forward(model, spec: BackboneSpec, source: LabelledImages, positions: np.ndarray,
            input_size: int, batch_size: int) -> np.ndarray:
    """Resize, preprocess and run the frozen model over source images, a chunk at a time."""
    chunks = []
    for start in range(0, len(positions), CHUNK):
        images = resize(source.images[positions[start:start + CHUNK]], input_size)
        chunks.append(model.predict(preprocess(spec, images), batch_size=batch_size, verbose=0))
    return np.concatenate(chunks).astype(np.float32)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file and os.replace: readers see the old or the new file."""
    temporary = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    with open(temporary, "wb") as handle:
        np.save(handle, array)
    os.replace(temporary, path)


def _open_rows(path: Path, n_rows: int, row_shape: tuple[int, ...]) -> np.memmap:
    """The entry's row file for writing, created (sparse) when missing or unreadable."""
    shape = (n_rows, *row_shape)
    try:
        rows = np.lib.format.open_memmap(path, mode="r+")
        if rows.shape == shape and rows.dtype == np.float32:
            return rows
    except (OSError, ValueError):
        pass
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def cached_rows(folder: Path | None, key: dict | None, positions: np.ndarray, n_rows: int,
                compute: Callable[[np.ndarray], np.ndarray],
                fill: np.ndarray | None = None) -> tuple[np.ndarray, int, float]:
    """Rows at `positions`, computing only those not cached yet (and, on a miss, those of `fill`
    too). Returns the rows, how many were computed, and the seconds spent waiting for another
    worker's lock."""
    if folder is None:
        return compute(positions), len(positions), 0.0
    folder.mkdir(parents=True, exist_ok=True)
    waited = time.perf_counter()
    with FileLock(str(folder) + ".lock"):
        waited = time.perf_counter() - waited
        done_path, rows_path = folder / "done.npy", folder / "rows.npy"
        done = np.load(done_path) if done_path.is_file() and rows_path.is_file() \
            else np.zeros(n_rows, dtype=bool)
        missing = positions[~done[positions]]
        if len(missing) and fill is not None:
            missing = np.union1d(missing, fill[~done[fill]])
        if len(missing):
            new = compute(missing)
            rows = _open_rows(rows_path, n_rows, new.shape[1:])
            rows[missing] = new
            rows.flush()
            del rows
            done[missing] = True
            (folder / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
            _atomic_save(done_path, done)
        return np.array(np.load(rows_path, mmap_mode="r")[positions]), len(missing), waited


@dataclass(frozen=True)
class Frozen:
    """A frozen tap's outputs as a dataset (arrays in place of images) and what they cost."""

    data: Dataset
    computed: int
    seconds: float
    waited: float


def frozen_datasets(base, spec: BackboneSpec, source: LabelledImages, splits: Splits,
                    input_size: int, taps: list[str], root: Path | None, batch_size: int,
                    fill_limit: int = 0) -> list[Frozen]:
    """Each tap's outputs for this run's train, val and test images, from the cache if there.

    The weights digest and the data fingerprint are computed once for all taps, and only when
    there is a cache to key. On a miss, a source of at most `fill_limit` images (and FILL_BYTES of
    rows) is filled whole: one forward pass then serves every size and seed of a sweep. Larger
    ones are filled on demand.
    """
    start = time.perf_counter()
    identity = None if root is None else (weights_digest(base), source.fingerprint())
    positions = np.unique(np.concatenate([splits.train, splits.val, splits.test]))
    n_rows = len(source.labels)

    def take(rows: np.ndarray, split: np.ndarray) -> np.ndarray:
        return rows[np.searchsorted(positions, split)]

    results = []
    for tap in taps:
        key = None if identity is None else entry_key(spec, *identity, input_size, tap)
        folder = None if key is None else entry_dir(root, key)
        model = extractor(base, spec, tap)
        whole = n_rows <= fill_limit and \
            n_rows * 4 * np.prod(model.output.shape[1:]) <= FILL_BYTES
        rows, computed, waited = cached_rows(
            folder, key, positions, n_rows,
            lambda missing, model=model: forward(model, spec, source, missing, input_size,
                                                 batch_size),
            fill=np.arange(n_rows) if whole else None)
        data = Dataset(take(rows, splits.train), source.labels[splits.train],
                       take(rows, splits.val), source.labels[splits.val],
                       take(rows, splits.test), source.labels[splits.test], source.class_names)
        seconds = time.perf_counter() - start - waited
        log.info("frozen %s of %s: %d rows used, %d computed (%.1fs)%s", tap, spec.name,
                 len(positions), computed, seconds,
                 f" in {folder}" if folder else " (cache off)")
        results.append(Frozen(data, computed, seconds, waited))
        start = time.perf_counter()
    return results


def frozen_dataset(base, spec: BackboneSpec, source: LabelledImages, splits: Splits,
                   input_size: int, tap: str, root: Path | None, batch_size: int,
                   fill_limit: int = 0) -> Frozen:
    """One tap's outputs (see frozen_datasets)."""
    return frozen_datasets(base, spec, source, splits, input_size, [tap], root, batch_size,
                           fill_limit)[0]
