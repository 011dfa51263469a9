"""Frozen-computation cache: what a frozen base computes over an image is computed once.

A frozen base in inference mode is a pure function of its input, so its pooled features (for
feature extraction and the linear probe) and its activations at a partial fine-tune's cut are
cached on disk. An entry is keyed by backbone, a digest of the actual weights, the dataset's
fingerprint, the input size, the preprocessing and the tap (pooled output or cut layer). It holds
one row per source image; a small source is filled whole on its first miss, a large one on demand,
so a sweep forwards each image at most once per backbone and weights, whatever the subset sizes,
seeds and heads. The rows live in a row cache (`tlbench.rowcache`: locked, written atomically,
served a batch at a time, never read whole); cut activations may be kept as float16
(cache.dtype), which halves their disk and reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlbench import paths
from tlbench.backbone import BackboneSpec, on_pixels
from tlbench.config import CacheConfig
from tlbench.data import Dataset, LabelledImages, Splits, split_rows
from tlbench.progress import reported
from tlbench.rowcache import RowFile, cached_rows, covers, done_mask, seconds_per_row

if TYPE_CHECKING:
    from tlbench.frozen.base_facts import BaseFacts

log = logging.getLogger("tlbench")

FORMAT = 3  # bump when what a row holds changes, so old entries are not reused
# Format 3: forwarded from the decoded-image cache's uint8 pixels, preprocessed in the model.
POOLED = "pooled"
CHUNK = 256  # images read and forwarded together
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
              precision: str, decoder: str, dtype: str = "float32") -> dict:
    """Everything that determines a cached row."""
    return {"format": FORMAT, "backbone": spec.name, "weights_sha256": weights,
            "data_fingerprint": source, "decoder": decoder, "input_size": input_size,
            "preprocess": list(spec.preprocessed_range), "tap": tap, "precision": precision,
            "dtype": dtype}


def entry_dir(root: Path, key: dict) -> Path:
    """The entry's folder: readable prefix, then a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{key['backbone']}-{key['input_size']}px-{key['tap']}-{digest}"


def extractor(base, spec: BackboneSpec, *taps: str):
    """The frozen computation on uint8 pixels: for each tap, the pooled (or flattened) base
    output, or the output of the layer it names."""
    import keras

    def output(tap: str):
        if tap != POOLED:
            return base.get_layer(tap).output
        pool = keras.layers.Flatten() if spec.features == "flat" else \
            keras.layers.GlobalAveragePooling2D()
        return pool(base.output)

    outputs = [output(tap) for tap in taps]
    return on_pixels(spec, keras.Model(base.input, outputs if len(outputs) > 1 else outputs[0]))


def forward(model, images: RowFile, positions: np.ndarray, batch_size: int):
    """Run the frozen model over the decoded images at `positions`, CHUNK at a time: (positions,
    one array per output of the model) chunks."""
    for start in range(0, len(positions), CHUNK):
        chunk = positions[start:start + CHUNK]
        outputs = model.predict(images.read(chunk), batch_size=batch_size, verbose=0)
        yield chunk, outputs if isinstance(outputs, list) else [outputs]


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
                    images: Callable[[np.ndarray], RowFile], fill_limit: int = 0,
                    facts: BaseFacts | None = None, cut_dtype: str = "float32") -> list[Frozen]:
    """Each tap's outputs for this run's train, val and test images, from the cache if there.

    `base` is the frozen network, or a function that builds it, called only when rows must be
    computed: with `facts` (its recorded weights digest and precision, which key the cache), a
    run whose rows are all cached never builds it; `images(positions)` gives the decoded-image
    rows the forward pass reads. The data fingerprint (and the weights digest without `facts`)
    is computed once for all taps, and only when there is a cache to key (without one, rows go
    to a scratch folder, removed when they are no longer used). On a miss, a source of at most
    `fill_limit` images (and FILL_BYTES of rows) is filled whole: one forward pass then serves
    every size and seed of a sweep. Larger ones are filled on demand. Taps other than the
    pooled one are kept as `cut_dtype` (float32 or float16).
    """
    start = time.perf_counter()
    built = {} if getattr(base, "weights", None) is None else {"base": base}

    def model(*tapped: str):
        if tapped not in built:
            built[tapped] = extractor(model_base(built, base), spec, *tapped)
        return built[tapped]

    cached, scratch = root is not None, None
    if not cached:
        scratch = tempfile.TemporaryDirectory(prefix="tlbench-frozen-")
        identity, root = ("uncached", "uncached", "uncached"), Path(scratch.name)
    else:
        identity = (facts.weights_sha256, source.fingerprint(), facts.precision) if facts else \
            (weights_digest(model_base(built, base)), source.fingerprint(),
             model_base(built, base).dtype_policy.name)
    positions = np.unique(np.concatenate([splits.train, splits.val, splits.test]))
    n_rows = len(source.labels)
    dtypes = {tap: "float32" if tap == POOLED else cut_dtype for tap in taps}
    keys = {tap: entry_key(spec, *identity[:2], input_size, tap, identity[2],
                           source.images.decoder, dtypes[tap]) for tap in taps}
    folders = {tap: entry_dir(root, key) for tap, key in keys.items()}

    def row_bytes(tap: str) -> int:
        return np.dtype(dtypes[tap]).itemsize * int(np.prod(model(tap).output.shape[1:]))

    whole = {tap: n_rows <= fill_limit and (covers(folders[tap], positions, n_rows, dtypes[tap])
                                            or n_rows * row_bytes(tap) <= FILL_BYTES)
             for tap in taps}
    ahead: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def joins(tap: str, later: str, missing: np.ndarray) -> bool:
        """Whether `later` will ask for exactly the rows `tap` computes (its entry holds none
        of them, and it fills alike), few enough to hold until then (AHEAD_BYTES)."""
        empty = not done_mask(folders[later], n_rows, dtypes[later])[missing].any()
        return empty and whole[later] == whole[tap] and \
            len(missing) * row_bytes(later) <= AHEAD_BYTES

    def compute(tap: str, missing: np.ndarray):
        """The tap's rows at `missing`, in chunks: computed ahead by an earlier tap's forward
        pass, or by one pass that also computes them for the later taps that will ask for the
        same rows (held until they do)."""
        rows = ahead.pop(tap, None)
        if rows is not None and np.array_equal(rows[0], missing):
            yield missing, rows[1]
            return
        joint = [tap, *(t for t in taps[taps.index(tap) + 1:] if joins(tap, t, missing))]
        held = {t: np.empty((len(missing), *model(t).output.shape[1:]), dtypes[t])
                for t in joint[1:]}
        offset = 0
        for chunk, outputs in forward(model(*joint), images(missing), missing, batch_size):
            for t, output in zip(joint[1:], outputs[1:], strict=True):
                held[t][offset:offset + len(chunk)] = output
            offset += len(chunk)
            yield chunk, outputs[0]
        ahead.update((t, (missing, rows)) for t, rows in held.items())

    def progress(tap: str):
        """compute(tap, ...) with a progress line for a long forward pass."""
        what = f"frozen {tap} of {spec.name}"
        return lambda missing: reported(compute(tap, missing), len(missing), what)

    results = []
    for tap in taps:
        folder = folders[tap]
        rows, computed, waited = cached_rows(
            folder, keys[tap], positions, n_rows, progress(tap),
            fill=np.arange(n_rows) if whole[tap] else None, dtype=dtypes[tap],
            what="feature cache", durable=cached)
        rows.folder_owner = scratch  # a scratch folder lives as long as its rows are used
        seconds = time.perf_counter() - start - waited
        rate = seconds_per_row(folder)
        log.info("frozen %s of %s: %d rows used, %d computed (%.1fs)%s", tap, spec.name,
                 len(positions), computed, seconds, f" in {folder}" if cached else
                 " (cache off)")
        results.append(Frozen(split_rows(rows, source, splits), computed, seconds, waited,
                              rate * len(positions)))
        start = time.perf_counter()
    return results


AHEAD_BYTES = 256 * 2**20
"""Rows one forward pass computes for a later tap are held in memory up to this many bytes
(else that tap makes a pass of its own)."""

def model_base(built: dict, base):
    """The base network, built now if `base` is its builder."""
    if "base" not in built:
        built["base"] = base()
    return built["base"]


def frozen_dataset(base, spec: BackboneSpec, source: LabelledImages, splits: Splits,
                   input_size: int, tap: str, root: Path | None, batch_size: int,
                   images: Callable[[np.ndarray], RowFile], fill_limit: int = 0,
                   facts: BaseFacts | None = None) -> Frozen:
    """One tap's outputs (see frozen_datasets)."""
    return frozen_datasets(base, spec, source, splits, input_size, [tap], root, batch_size,
                           images, fill_limit, facts)[0]
