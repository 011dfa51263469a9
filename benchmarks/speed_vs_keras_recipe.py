"""tlbench against the plain Keras transfer-learning recipe, same grid, one process, as a ratio.

    python benchmarks/speed_vs_keras_recipe.py [--quick]

Grid: mobilenetv2 and resnet50 (source:digits04 checkpoints, pretrained beforehand and not timed)
x {feature_extraction, partial_finetune} x 10/50/all images per class (the default sweep's sizes)
x seeds 0, 1, on digits 5-9 at 32 px; 10 epochs per phase (trainer.epochs' default), no early
stopping, batch 32, Adam, the same splits and the same uint8 images (the decoded-image cache's).

(a) the recipe of the Keras transfer-learning guide: the split's uint8 images in memory (as the
    guide's arrays), the backbone's preprocessing as the model's first layer, then the frozen base
    (training=False) and the head, `fit` on images; partial fine-tuning then unfreezes the top
    stage and recompiles at lr / 10.
(b) tlbench's path (`strategy.for_run(config).train(prepared)`, what `python -m tlbench` runs):
    frozen outputs computed once into a feature cache that starts empty, heads and top stages
    trained on them.
Each configuration runs (a) then (b), so both see the same machine load.

Timed per run: everything after the base is built (forward passes, caching, fit, evaluation);
excluded in both: loading data and weights (the split's images decoded, the base built with its
weights, before the clock starts). The floor is one forward pass per backbone over the images the
grid needs (largest subset + val + test), from the decoded-image cache as tlbench's forward pass
reads them. Measure on an otherwise idle machine.
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
from tlbench.backbone import BACKBONES, build_base, unfreeze_top  # noqa: E402
from tlbench.backbone.preprocessing import Preprocess  # noqa: E402
from tlbench.config import RunConfig, parse_config  # noqa: E402
from tlbench.data import decoded_images, images_root, load_source, split_indices  # noqa: E402
from tlbench.frozen.cache import POOLED, extractor, forward  # noqa: E402
from tlbench.prepare import Prepared, prepare  # noqa: E402
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


def keras_recipe(config: RunConfig, prepared: Prepared, images: dict[str, np.ndarray]) -> float:
    """The guide's recipe on the split's uint8 images; returns test accuracy."""
    trainer, base = config.trainer, prepared.base
    base.trainable = False
    inputs = keras.Input(shape=base.input_shape[1:], dtype="uint8")
    x = Preprocess(prepared.entry.preprocess)(inputs)  # cast to float32, then preprocess_input
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(len(prepared.source.class_names),
                                                   activation="softmax")(x))
    phases = [trainer.lr]
    if config.strategy.name == "partial_finetune":
        phases.append(trainer.lr * config.strategy.lr_scale)
    for index, lr in enumerate(phases):
        if index == 1:  # unfreeze the top stage, BatchNorm stays frozen, recompile
            unfreeze_top(base, prepared.entry, config.strategy.unfreeze_blocks,
                         config.strategy.unfreeze_fraction)
        model.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
                      loss="sparse_categorical_crossentropy")
        model.fit(images["x_train"], images["y_train"],
                  validation_data=(images["x_val"], images["y_val"]),
                  epochs=trainer.epochs, batch_size=trainer.batch_size, verbose=0)
    return model.evaluate(images["x_test"], images["y_test"], batch_size=trainer.batch_size,
                          verbose=0)[1]


def in_memory(prepared: Prepared) -> dict[str, np.ndarray]:
    """The run's splits as the guide's arrays: uint8 images (read whole from the decoded-image
    cache) and labels."""
    dataset = prepared.dataset()
    return {"x_train": dataset.x_train.load(), "y_train": dataset.y_train,
            "x_val": dataset.x_val.load(), "y_val": dataset.y_val,
            "x_test": dataset.x_test.load(), "y_test": dataset.y_test}


def one_run(config: RunConfig, way: str) -> tuple[float, float]:
    """Prepare the run, decode its images and build its base (untimed), then train and evaluate
    one way; (seconds, test accuracy)."""
    prepared = prepare(config, config.backbone.weights, None)
    prepared.base  # noqa: B018 - built before the clock, on both sides
    if way == "keras":
        images = in_memory(prepared)
        start = time.perf_counter()
        accuracy = keras_recipe(config, prepared, images)
    else:
        prepared.images(prepared.used)  # decoded before the clock, as for the recipe
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
    images = decoded_images(source, config.data.name, config.backbone.input_size, needed,
                            images_root(), config.cache.fill_limit)
    model = extractor(build_base(spec, config.backbone.input_size, weights,
                                 config.backbone.bn_momentum), spec, POOLED)
    batch_size = config.trainer.batch_size
    for _ in forward(model, images, needed[:64], batch_size):  # trace once, as any first call does
        pass
    start = time.perf_counter()
    for _ in forward(model, images, needed, batch_size):
        pass
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
