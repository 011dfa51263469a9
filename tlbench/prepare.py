"""Prepare stage, shared by runs, `rank` and the tests: everything before training.

runtime (threads, seeds, determinism) -> source checkpoint (trained once, cached) -> data source
-> splits -> weights digest -> base network with its weights, built when first used (a cached run
that reads only the base's frozen outputs never builds it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlbench import backbone, data, paths, pretrain, runtime
from tlbench.backbone import BackboneSpec
from tlbench.config import RunConfig
from tlbench.errors import TlbenchError
from tlbench.rowcache import RowFile

log = logging.getLogger("tlbench")


@dataclass
class Prepared:
    """A run made ready to train: its config, backbone entry, data, splits and base.

    `weights` is what the base was loaded from (a source checkpoint's file for source:<name>),
    `weights_sha256` its digest; `source_overlap` how many val/test images the source
    checkpoint trained on (None without one); `setup_seconds` covers data and base (when
    built), not pretraining. `base` is built on first use, from the same seed whenever that is."""

    config: RunConfig
    entry: BackboneSpec
    source: data.LabelledImages
    splits: data.Splits
    build: Callable[[], Any]
    weights: str | None
    weights_sha256: str | None
    checkpoint: pretrain.Checkpoint | None
    source_overlap: int | None
    setup_seconds: float
    _base: Any = field(default=None, repr=False)

    @property
    def base(self):
        """The base network with its weights, built (and timed as set-up) on first use."""
        if self._base is None:
            start = time.perf_counter()
            self._base = self.build()
            self.setup_seconds += time.perf_counter() - start
        return self._base

    def images(self, positions: np.ndarray) -> RowFile:
        """The decoded-image cache file holding the source's images at `positions` at the
        backbone's input size, decoding those not there yet (timed as set-up)."""
        start = time.perf_counter()
        rows = data.decoded_images(self.source, self.config.data.name,
                                   self.config.backbone.input_size, positions, data.images_root(),
                                   self.config.cache.fill_limit)
        self.setup_seconds += time.perf_counter() - start
        return rows

    def dataset(self) -> data.Dataset:
        """This run's splits as uint8 image rows at the backbone's input size."""
        return data.split_rows(self.images(self.used), self.source, self.splits)

    @property
    def used(self) -> np.ndarray:
        """The source positions of every image this run uses (its splits), sorted."""
        return np.unique(np.concatenate([self.splits.train, self.splits.val, self.splits.test]))

    @property
    def origin(self) -> str:
        """What decides the base's weights: their file's digest, or the seed of a random
        initialisation."""
        return self.weights_sha256 or f"random init, seed {self.config.seed}"


def prepare(config: RunConfig, weights: str | None, threads: int | None) -> Prepared:
    """Runtime, data, splits, the leak check, source checkpoint and the base loaded with
    `weights`."""
    import keras

    from tlbench.training import train

    entry = config.backbone.entry()
    runtime.clear_session()  # Keras' state of earlier runs: garbage now
    train.configure_runtime(config.trainer, config.seed, threads)  # pools are fixed once, here
    start = time.perf_counter()
    source = data.load_source(config.data)
    splits = data.split_indices(source, config.data, config.seed)
    log.info("data %s: %d train / %d val / %d test, %d classes; %s", config.data.name,
             len(splits.train), len(splits.val), len(splits.test), len(source.class_names),
             source.images.sizes_text(config.backbone.input_size))
    checkpoint, overlap = None, None
    if backbone.weights_kind(weights) == "source":
        overlap = refuse_source_overlap(config, source, splits)
    data_seconds = time.perf_counter() - start
    if overlap is not None:  # timed apart as pretrain_seconds
        checkpoint = pretrain.source_checkpoint(config.backbone, config.pretrain, config.trainer)
        weights = str(checkpoint.weights_path)
    start = time.perf_counter()
    runtime.clear_session()  # after pretraining; garbage collected above
    keras.mixed_precision.set_dtype_policy(config.trainer.precision)  # clear_session reset it

    def build():
        runtime.set_random_seed(config.seed)  # the same initialisation whatever ran before
        return backbone.build_base(entry, config.backbone.input_size, weights,
                                   config.backbone.bn_momentum)

    prepared = Prepared(config, entry, source, splits, build, weights, None, checkpoint, overlap,
                        0.0)
    if not weights_on_disk(entry, config.backbone.input_size, weights):
        prepared.base  # noqa: B018 - built now: it downloads them or says what to do
    prepared.weights_sha256 = checkpoint.manifest["weights_sha256"] if checkpoint else \
        backbone.weights_sha256(entry, config.backbone.input_size, weights)
    prepared.setup_seconds = data_seconds + time.perf_counter() - start  # a build included
    return prepared


def check_cache_folders(config: RunConfig, weights: str | None, frozen_cached: bool) -> None:
    """Create the feature cache (where the run caches frozen outputs) and, for source:<name>
    weights, the source-checkpoint cache, or fail with one line before the run's MLflow run
    starts."""
    if frozen_cached:
        paths.writable_cache("features", config.cache.dir, "cache.dir")
    if backbone.weights_kind(weights) == "source":
        paths.writable_cache("pretrained", config.pretrain.cache_dir, "pretrain.cache_dir")


def weights_on_disk(entry: BackboneSpec, input_size: int, weights: str | None) -> bool:
    """Whether the weights need no file or their file is there (ImageNet: in Keras' cache)."""
    if weights is None:
        return True
    path = backbone.imagenet_path(entry, input_size) if weights == "imagenet" else weights
    return Path(path).is_file()


def refuse_source_overlap(config: RunConfig, source: data.LabelledImages,
                          splits: data.Splits) -> int:
    """0, or refuse the run: how many of its val and test images (by content) the source
    checkpoint of backbone.weights=source:<name> trains on."""
    trained, positions = pretrain.training_images(config.backbone, config.pretrain)
    evaluated = np.concatenate([splits.val, splits.test])
    overlap = 0
    if trained.images.image_shape == source.images.image_shape:
        seen = set(trained.image_digests(positions))
        overlap = sum(digest in seen for digest in source.image_digests(evaluated))
    if overlap:
        raise TlbenchError(
            f"backbone.weights={config.backbone.weights}: {overlap} of the {len(evaluated)} "
            f"val/test images of data={config.data.name} are training images of that source "
            "checkpoint (same pixels), which would inflate its scores; use a target that shares "
            "no images with the source (e.g. data=digits59 for source:digits04) or other "
            "weights.", metrics={"source_overlap": overlap})
    return overlap
