"""Prepare stage, shared by runs, `rank` and the tests: everything before training.

runtime (threads, seeds, determinism) -> source checkpoint (trained once, cached) -> data source
-> splits -> base network with its weights -> weights digest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from tlbench import backbone, data, pretrain, registry
from tlbench.backbone import BackboneSpec
from tlbench.config import RunConfig

log = logging.getLogger("tlbench")


@dataclass
class Prepared:
    """A run made ready to train: its config, backbone entry, data, splits and base.

    `weights` is what the base was loaded from (a source checkpoint's file for source:<name>),
    `weights_sha256` its digest; `setup_seconds` covers data and base, not pretraining."""

    config: RunConfig
    entry: BackboneSpec
    source: data.LabelledImages
    splits: data.Splits
    base: Any
    weights: str | None
    weights_sha256: str | None
    checkpoint: pretrain.Checkpoint | None
    setup_seconds: float


def prepare(config: RunConfig, weights: str | None, threads: int | None) -> Prepared:
    """Runtime, source checkpoint, data, splits and the base loaded with `weights`."""
    import keras

    from tlbench import train

    entry = registry.BACKBONES[config.backbone.name]
    train.configure_runtime(config.trainer, config.seed, threads)  # pools are fixed once, here
    checkpoint = None
    if backbone.weights_kind(weights) == "source":  # timed apart as pretrain_seconds
        checkpoint = pretrain.source_checkpoint(config.backbone, config.pretrain, config.trainer)
        weights = str(checkpoint.weights_path)
    start = time.perf_counter()
    keras.backend.clear_session()
    train.configure_runtime(config.trainer, config.seed, threads)
    source = data.load_source(config.data)
    splits = data.split_indices(source, config.data, config.seed)
    log.info("data %s: %d train / %d val / %d test, %d classes", config.data.name,
             len(splits.train), len(splits.val), len(splits.test), len(source.class_names))
    base = backbone.build_base(entry, config.backbone.input_size, weights,
                               config.backbone.bn_momentum)
    sha256 = checkpoint.manifest["weights_sha256"] if checkpoint else \
        backbone.weights_sha256(entry, config.backbone.input_size, weights)
    return Prepared(config, entry, source, splits, base, weights, sha256, checkpoint,
                    time.perf_counter() - start)
