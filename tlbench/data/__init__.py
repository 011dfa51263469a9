"""Data stage: load a registered source, cut fixed val/test splits and a nested train subset.

One module per source (its config class beside its loader, registered by name), `split` for the
splits, `decoded` for the decoded-image cache and `materialise` for a run's splits as its rows.
A new source is one module plus one YAML in conf/data/, imported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from tlbench import registry
from tlbench.config import DataConfig
from tlbench.data import digits, folder, keras_datasets, npz, shapes, synthetic, tfds  # noqa: F401
from tlbench.data.decoded import decoded_images, images_root
from tlbench.data.materialise import Dataset, materialise, split_rows
from tlbench.data.source import ArrayImages, ImageSource, LabelledImages, resize
from tlbench.data.split import Splits, fixed_splits, nested_subset, split_indices

__all__ = ["ArrayImages", "Dataset", "ImageSource", "LabelledImages", "Splits",
           "decoded_images", "fixed_splits", "images_root", "load_dataset", "load_source",
           "materialise", "nested_subset", "resize", "split_indices", "split_rows"]


SPLIT_SETTINGS = {field.name for field in dataclasses.fields(DataConfig)} - {"name",
                                                                              "input_size"}
KEPT_SOURCES = 2  # a target and a pretraining source
LOADED: OrderedDict[tuple, tuple[LabelledImages, list[logging.LogRecord]]] = OrderedDict()
"""The sources last loaded in this process, with the log records their loading emitted."""


def load_source(cfg: DataConfig) -> LabelledImages:
    """The configured source, whole (lazily, for sources that stream). The last ones loaded
    are kept for the process's next runs with the same source settings and content, their log
    lines repeated: a sweep reads and fingerprints its source once (digits: 18 ms a run)."""
    key = source_key(cfg)
    if key in LOADED:
        LOADED.move_to_end(key)
        source, records = LOADED[key]
        for record in records:
            logging.getLogger(record.name).log(record.levelno, "%s", record.getMessage())
        return source
    while len(LOADED) >= KEPT_SOURCES:
        LOADED.popitem(last=False)
    with recorded_logs() as records:
        source = registry.SOURCES[cfg.name].load(cfg)
    LOADED[key] = (read_only(source), records)
    return source


def read_only(source: LabelledImages) -> LabelledImages:
    """The source with its arrays made read-only, since later runs share them."""
    arrays = [source.labels, source.given_test, getattr(source.images, "pixels", None)]
    for array in arrays:
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return source


def source_key(cfg: DataConfig) -> tuple:
    """What decides a loaded source: its name, settings other than the splits', and the digest
    of the files it reads (so an edited folder or file is read again)."""
    settings = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(cfg)
                if field.name not in SPLIT_SETTINGS}
    return type(cfg).__name__, repr(sorted(settings.items())), cfg.content_digest()


@contextlib.contextmanager
def recorded_logs() -> Iterator[list[logging.LogRecord]]:
    """The records tlbench's loggers emit inside the block (emitted as usual too)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tlbench")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def load_dataset(cfg: DataConfig, input_size: int, seed: int,
                 fill_limit: int = sys.maxsize) -> Dataset:
    """Load the configured source and cut this run's splits as rows of the decoded-image cache
    at the backbone's input size (on a miss, the whole source is decoded if it has at most
    `fill_limit` images)."""
    source = load_source(cfg)
    return materialise(source, cfg.name, split_indices(source, cfg, seed), input_size,
                       images_root(), fill_limit)
