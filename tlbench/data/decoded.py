"""Decoded-image cache: each source image decoded and resized once per content and size.

An entry holds a source's images as uint8 rows at one input size (`tlbench.rowcache`), keyed
by the source's fingerprint, the size and the decoder. Every later run of a sweep (any
strategy, seed or training-set size) and every worker reads its batches from there and decodes
nothing. On a miss, a source of at most `fill_limit` images is decoded whole (one parallel pass
serves every split of the sweep); a larger one only where a run needs rows not decoded yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from tlbench import paths
from tlbench.data.source import LabelledImages
from tlbench.progress import duration, reported
from tlbench.rowcache import RowFile, cached_rows

log = logging.getLogger("tlbench")

FORMAT = 1  # bump when what a row holds changes, so old entries are not reused


def images_root() -> Path:
    """$TLBENCH_CACHE/images, else ~/.cache/tlbench/images."""
    return paths.cache_dir("images")


def entry_key(source: LabelledImages, size: int) -> dict:
    """Everything that determines a source's decoded rows at one size."""
    return {"format": FORMAT, "data_fingerprint": source.fingerprint(), "size": size,
            "decoder": source.images.decoder}


def entry_dir(root: Path, name: str, key: dict) -> Path:
    """The entry's folder: readable prefix (source name, size), then a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{name}-{key['size']}px-{digest}"


def decoded_images(source: LabelledImages, name: str, size: int, positions: np.ndarray,
                   root: Path, fill_limit: int) -> RowFile:
    """The cache file holding the source's images at `positions` (and, on a miss, every image
    of a source of at most `fill_limit`) as (size, size, 3) uint8 rows, decoding only those not
    cached yet, with a progress line for a long fill."""
    key = entry_key(source, size)
    folder = entry_dir(root, name, key)
    n_rows = len(source.labels)
    fill = np.arange(n_rows) if n_rows <= fill_limit else None
    start = time.perf_counter()

    def decode(missing: np.ndarray):
        what = f"decoding {name} images at {size}x{size} into {folder}"
        return reported(source.images.decode(missing, size), len(missing), what)

    rows, computed, waited = cached_rows(folder, key, positions, n_rows, decode, fill,
                                         np.uint8, "image cache")
    if computed:
        seconds = time.perf_counter() - start - waited
        log.info("decoded %d %s images at %dx%d in %s (%.0f images/s) into %s", computed, name,
                 size, size, duration(seconds), computed / max(seconds, 1e-9), folder)
    return rows
