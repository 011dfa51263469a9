"""tlbench against the plain Keras transfer-learning recipe, same grid, one process, as a ratio.

    python benchmarks/speed_vs_keras_recipe.py [--quick]

Grid: mobilenetv2 and resnet50 (source:digits04 checkpoints, pretrained beforehand and not timed)
x {feature_extraction, partial_finetune} x 10/50/all images per class (the default sweep's sizes)
x seeds 0, 1, on digits 5-9 at 32 px; 10 epochs per phase (trainer.epochs' default), no early
stopping, batch 32, Adam, the same splits and preprocessed images.

(a) the recipe of the Keras transfer-learning guide: frozen base inside the model (training=False),
    `fit` on images; partial fine-tuning then unfreezes the top stage and recompiles at lr / 10.
(b) tlbench's path (the strategy object's `train`, what `python -m tlbench` runs): frozen outputs
    computed once into a feature cache that starts empty, heads and top stages trained on them.
Each configuration runs (a) then (b), so both see the same machine load.

Timed per run: everything after the base is built (forward passes, caching, fit, evaluation);
excluded in both: loading data and weights. The floor is one forward pass per backbone over the
images the grid needs (largest subset + val + test). Measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from tlbench import strategy  # noqa: E402
from tlbench.backbone import BACKBONES, build_base, preprocessed, unfreeze_top  # noqa: E402
from tlbench.config import RunConfig, parse_config  # noqa: E402
from tlbench.data import load_source, materialise, split_indices  # noqa: E402
from tlbench.frozen.cache import POOLED, extractor, forward  # noqa: E402
from tlbench.prepare import prepare  # noqa: E402
from tlbench.pretrain import source_checkpoint  # noqa: E402

BACKBONE_NAMES = ("mobilenetv2", "resnet50")
STRATEGIES = ("feature_extraction", "partial_finetune")
SIZES = ("10", "50", "all")
SEEDS = (0, 1)
COMMON = ["backbone.weights=source:digits04", "trainer.patience=null"]


def config_for(backbone: str, strategy: str, size: str, seed: int, cache_dir: str) -> RunConfig:
    """The run's config, composed exactly as `python -m tlbench` composes it."""
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *COMMON, f"backbone={backbone}", f"strategy={strategy}", f"data.train_size={size}",
            f"seed={seed}", f"cache.dir={cache_dir}"])
    return parse_config(cfg)


def keras_recipe(config: RunConfig, base, data) -> float:
    """The guide's recipe on preprocessed images; returns test accuracy."""
    trainer = config.trainer
    base.trainable = False
    inputs = keras.Input(shape=base.input_shape[1:])
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(data.n_classes, activation="softmax")(x))
    phases = [trainer.lr]
    if config.strategy.name == "partial_finetune":
        phases.append(trainer.lr * config.strategy.lr_scale)
    for index, lr in enumerate(phases):
        if index == 1:  # unfreeze the top stage, BatchNorm stays frozen, recompile
            unfreeze_top(base, BACKBONES[config.backbone.name], 1, None)
        model.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
                      loss="sparse_categorical_crossentropy")
        model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                  epochs=trainer.epochs, batch_size=trainer.batch_size, verbose=0)
    return model.evaluate(data.x_test, data.y_test, batch_size=trainer.batch_size, verbose=0)[1]


def one_run(config: RunConfig, way: str) -> tuple[float, float]:
    """Prepare the run (untimed), then train and evaluate one way; (seconds, test accuracy)."""
    prepared = prepare(config, config.backbone.weights, None)
    if way == "keras":
        data = preprocessed(prepared.entry, materialise(prepared.source, prepared.splits,
                                                        config.backbone.input_size))
        start = time.perf_counter()
        accuracy = keras_recipe(config, prepared.base, data)
    else:
        start = time.perf_counter()
        result = strategy.for_run(config).train(prepared)
        accuracy = result.metrics["test_accuracy"]
    return time.perf_counter() - start, accuracy


def floor_seconds(backbone: str, cache_dir: str) -> float:
    """One forward pass of the frozen backbone over every image the grid needs."""
    config = config_for(backbone, "feature_extraction", "all", 0, cache_dir)
    spec = BACKBONES[backbone]
    weights = str(source_checkpoint(config.backbone, config.pretrain, config.trainer)
                  .weights_path)
    keras.backend.clear_session()
    source = load_source(config.data)
    splits = [split_indices(source, config.data, seed) for seed in SEEDS]
    needed = np.unique(np.concatenate([p for s in splits for p in (s.train, s.val, s.test)]))
    model = extractor(build_base(spec, 32, weights, config.backbone.bn_momentum), spec, POOLED)
    forward(model, spec, source, needed[:64], 32, 32)  # trace once, as any first call does
    start = time.perf_counter()
    forward(model, spec, source, needed, 32, 32)
    return time.perf_counter() - start


def main() -> None:
    """Run the grid both ways and print times, ratios and accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, sizes 10 and all")
    args = parser.parse_args()
    sizes, seeds = (("10", "all"), (0,)) if args.quick else (SIZES, SEEDS)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for backbone in BACKBONE_NAMES:  # pretrain (cached, untimed) before anything is timed
            config = config_for(backbone, "feature_extraction", "10", 0, cache_dir)
            source_checkpoint(config.backbone, config.pretrain, config.trainer)
        for backbone, strategy, size, seed in itertools.product(
                BACKBONE_NAMES, STRATEGIES, sizes, seeds):
            config = config_for(backbone, strategy, size, seed, cache_dir)
            for way in ("keras", "tlbench"):  # side by side, under the same machine load
                seconds, accuracy = one_run(config, way)
                results.setdefault((way, strategy), []).append((seconds, accuracy))
                print(f"{way:8s} {backbone:12s} {strategy:18s} n={size:>3s} seed={seed} "
                      f"{seconds:6.1f}s test_acc={accuracy:.3f}", flush=True)
        floor = sum(floor_seconds(backbone, cache_dir) for backbone in BACKBONE_NAMES)
    print()
    for strategy in STRATEGIES:
        (keras_s, keras_acc), (ours_s, ours_acc) = (
            [sum(r[0] for r in results[(way, strategy)]),
             statistics.mean(r[1] for r in results[(way, strategy)])]
            for way in ("keras", "tlbench"))
        print(f"{strategy:18s} keras recipe {keras_s:7.1f}s  tlbench {ours_s:6.1f}s  "
              f"speed-up {keras_s / ours_s:5.1f}x  mean test acc {keras_acc:.3f} vs "
              f"{ours_acc:.3f} ({100 * (ours_acc - keras_acc):+.1f} points)")
    fe = sum(r[0] for r in results[("tlbench", "feature_extraction")])
    print(f"feature_extraction floor (one forward pass per backbone): {floor:.1f}s; "
          f"tlbench's grid takes {fe / floor:.1f}x the floor")


if __name__ == "__main__":
    main()
