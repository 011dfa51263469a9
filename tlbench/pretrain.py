"""Pretrain stage: train a backbone on a source dataset once, cache its headless weights.

`backbone.weights=source:<name>` asks for a checkpoint keyed by backbone, source, input size,
BatchNorm momentum and the pretrain settings. The first worker to ask trains it under a file lock
and writes it atomically; every other worker waits for the lock and loads the cached files. A
checkpoint directory holds `base.weights.h5` and `manifest.json` (written last: its presence means
the checkpoint is complete). Since recipe 2 it also holds `head.weights.h5`, the source classifier
that pretraining fitted on the pooled base output: with it the checkpoint is the whole source
model, whose class probabilities LEEP and NCE read (`source_head`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tlbench import __version__, paths, registry
from tlbench.backbone import BackboneSpec, build_base, on_pixels, sha256_of
from tlbench.config import (
    DATA_LABELS,
    SOURCE_PREFIX,
    BackboneConfig,
    DataConfig,
    DenseHeadConfig,
    PretrainConfig,
    TrainerConfig,
    group_config,
)
from tlbench.errors import TlbenchError

log = logging.getLogger("tlbench")

RECIPE = 4  # bump when the training recipe or the files change, so old checkpoints are not reused
# Recipe 3: trained through the run trainer (tf.data input, seeded shuffling), not a fit of its own.
# Recipe 4: on uint8 pixels from the decoded-image cache, preprocessed inside the model.
WEIGHTS_FILE = "base.weights.h5"
HEAD_FILE = "head.weights.h5"  # recipe 2: the source classifier on pooled features
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Checkpoint:
    """A source-pretrained base: its weights file, manifest, and what obtaining it cost."""

    weights_path: Path
    manifest: dict
    pretrain_seconds: float
    cache_hit: bool


registry.PRETRAIN_SOURCES.register("digits04", ("digits", {"classes": [0, 1, 2, 3, 4]}))
registry.PRETRAIN_SOURCES.register("shapes", ("shapes", {"images_per_class": 200}))
"""Sources for backbone.weights=source:<name>, as a data option and its overrides: a near source
(digits 0-4, no class or image shared with the digits59 target) and a far one."""


def source_data(source: str) -> DataConfig:
    """The data config a pretraining source names."""
    option, overrides = registry.PRETRAIN_SOURCES[source]
    return group_config("data", option, registry.SOURCES[option].Config, **overrides)


def training_data(source: str, input_size: int) -> DataConfig:
    """The data config pretraining reads: the source whole, at the backbone's input size."""
    return dataclasses.replace(source_data(source), train_size="all", input_size=input_size)


def training_images(backbone: BackboneConfig, cfg: PretrainConfig):
    """The images backbone.weights=source:<name> trains on and their positions in its source:
    known before the checkpoint is trained."""
    from tlbench.data import load_source, split_indices

    data_cfg = training_data(backbone.weights.removeprefix(SOURCE_PREFIX), backbone.input_size)
    source = load_source(data_cfg)
    return source, split_indices(source, data_cfg, cfg.seed).train


def cache_root(cfg: PretrainConfig) -> Path:
    """pretrain.cache_dir, else $TLBENCH_CACHE/pretrained, else ~/.cache/tlbench/pretrained."""
    return paths.cache_dir("pretrained", cfg.cache_dir)


def checkpoint_key(backbone: BackboneConfig, source: str, cfg: PretrainConfig) -> dict:
    """Everything that determines the pretrained weights (the cache location excluded)."""
    settings = dataclasses.asdict(cfg)
    settings.pop("cache_dir")
    settings.pop("min_val_accuracy")
    return {
        "backbone": backbone.entry().name,  # a file's network: its name carries the file digest
        "input_size": backbone.input_size,
        "bn_momentum": backbone.bn_momentum,
        "source": source,
        "source_data": {key: value for key, value in dataclasses.asdict(source_data(source))
                        .items() if key not in (*DATA_LABELS, "protocol")},
        "pretrain": settings,
        "recipe": RECIPE,
    }


def checkpoint_dir(backbone: BackboneConfig, source: str, cfg: PretrainConfig) -> Path:
    """The cache directory for one key: readable prefix plus a hash of the whole key."""
    key = checkpoint_key(backbone, source, cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cfg) / f"{backbone.name}-{source}-{backbone.input_size}px-{digest}"


def source_checkpoint(backbone: BackboneConfig, cfg: PretrainConfig,
                      trainer: TrainerConfig) -> Checkpoint:
    """The checkpoint for backbone.weights=source:<name>, trained now if not cached; refused if
    its source validation accuracy is below pretrain.min_val_accuracy."""
    source = backbone.weights.removeprefix(SOURCE_PREFIX)
    checkpoint = ensure_checkpoint(backbone, source, cfg, trainer)
    accuracy = checkpoint.manifest["source_val_accuracy"]
    if accuracy < cfg.min_val_accuracy:
        raise TlbenchError(
            f"backbone.weights={backbone.weights}: the checkpoint's source val accuracy is "
            f"{accuracy:.3f}, below pretrain.min_val_accuracy={cfg.min_val_accuracy}; raise "
            f"pretrain.epochs or lower pretrain.min_val_accuracy "
            f"({checkpoint.weights_path.parent})."
        )
    return checkpoint


def ensure_checkpoint(backbone: BackboneConfig, source: str, cfg: PretrainConfig,
                      trainer: TrainerConfig) -> Checkpoint:
    """Load the cached checkpoint, or train and cache it; concurrent callers train it once."""
    folder = checkpoint_dir(backbone, source, cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with FileLock(str(folder) + ".lock"):
        manifest_path = folder / MANIFEST_FILE
        cache_hit = manifest_path.is_file()
        if not cache_hit:
            log.info("pretraining %s on source %s at %dpx, %d epochs (once; cached in %s); "
                     "the first epoch also traces the model", backbone.name, source,
                     backbone.input_size, cfg.epochs, folder)
            _write_checkpoint(folder, backbone, source, cfg, trainer)
        manifest = json.loads(manifest_path.read_text())
    seconds = 0.0 if cache_hit else time.perf_counter() - start
    log.info("source checkpoint %s (%s): source val accuracy %.4f", folder.name,
             "cached" if cache_hit else f"trained in {seconds:.0f} s",
             manifest["source_val_accuracy"])
    return Checkpoint(folder / WEIGHTS_FILE, manifest, seconds, cache_hit)


def _write_checkpoint(folder: Path, backbone: BackboneConfig, source: str, cfg: PretrainConfig,
                      trainer: TrainerConfig) -> None:
    """Train, then write weights and manifest via temporary files and os.replace."""
    folder.mkdir(exist_ok=True)
    start = time.perf_counter()
    base, head, facts = pretrain(backbone.entry(), backbone, source, cfg, trainer)
    for model, name in ((base, WEIGHTS_FILE), (head, HEAD_FILE)):
        temporary = folder / f"tmp-{os.getpid()}.weights.h5"
        model.save_weights(temporary)
        os.replace(temporary, folder / name)
    manifest = facts | {
        "key": checkpoint_key(backbone, source, cfg),
        "pretrain_seconds": round(time.perf_counter() - start, 3),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_of(folder / WEIGHTS_FILE),
        "head_file": HEAD_FILE,
        "head_sha256": sha256_of(folder / HEAD_FILE),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    temporary = folder / f"tmp-{os.getpid()}.json"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, folder / MANIFEST_FILE)


def pretrain(spec: BackboneSpec, backbone: BackboneConfig, source: str, cfg: PretrainConfig,
             trainer: TrainerConfig):
    """Train the whole backbone plus a softmax head on the source's train split (Adam, cosine
    learning-rate decay to 0, so the last epoch is a settled one).

    Returns the trained headless base, the source head (the classifier on the pooled base output)
    and the facts for the manifest, including the inference-mode accuracy on the source's
    validation split.
    """
    import keras

    from tlbench.data import load_dataset
    from tlbench.strategy.base import head_layers, unfreeze_all, with_head
    from tlbench.training import train
    from tlbench.training.plan import Phase, Plan

    settings = dataclasses.replace(trainer, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                   lr=cfg.lr, optimizer="adam", patience=None,
                                   precision="float32")  # checkpoints do not depend on it
    keras.backend.clear_session()
    train.configure_runtime(settings, cfg.seed, threads=None)  # threads: fixed by the caller
    data_cfg = training_data(source, backbone.input_size)
    data = load_dataset(data_cfg, backbone.input_size, cfg.seed)
    base = build_base(spec, backbone.input_size, None, backbone.bn_momentum)
    head_cfg = source_head_config()
    head = head_layers(data.n_classes, head_cfg)
    model = on_pixels(spec, with_head(base, data.n_classes, head_cfg, base_training=None,
                                      classifier=head))
    steps = cfg.epochs * -(-len(data.y_train) // cfg.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=steps)
    plan = Plan(model, [Phase("pretrain", cfg.epochs, schedule, unfreeze_all(base))])
    what = f"pretraining {backbone.name} on {source}"
    _, history = train.fit(plan, {"images": data}, settings, cfg.seed, progress=what)
    predict = train.keras_classes(model, cfg.batch_size)

    def accuracy(x, y) -> float:
        return float((predict([x])[0] == y).mean())

    return base, head, {
        "backbone": spec.name,
        "source": source,
        "source_data": dataclasses.asdict(data_cfg),
        "classes": list(data.class_names),
        "input_size": backbone.input_size,
        "bn_momentum": backbone.bn_momentum,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "n_train": len(data.y_train),
        "n_val": len(data.y_val),
        "source_train_accuracy": accuracy(data.x_train, data.y_train),
        "source_val_accuracy": accuracy(data.x_val, data.y_val),
        "final_train_loss": history[-1]["loss"],
        "tlbench_version": __version__,
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }


def source_head_config() -> DenseHeadConfig:
    """The source classifier: the dense head without standardisation (the whole network trains
    from random weights, so features have no fixed scale to standardise)."""
    return group_config("head", "dense", DenseHeadConfig, standardize=False)


def source_head(checkpoint: Checkpoint, n_features: int):
    """The checkpoint's source classifier as a Keras model mapping pooled base features (as the
    feature cache stores them) to source-class probabilities; None for a checkpoint without one."""
    import keras

    from tlbench.strategy.base import head_layers

    path = checkpoint.weights_path.parent / HEAD_FILE
    if not path.is_file():
        return None
    classifier = head_layers(len(checkpoint.manifest["classes"]), source_head_config())
    head = keras.Sequential([keras.Input(shape=(n_features,)), classifier])
    classifier.load_weights(path)
    return head
