"""Training is reproducible, timed honestly, and immune to the small-data BatchNorm collapse."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlbench.rowcache import Rows
from tlbench.training import batches, train
from tlbench.training.train import configure_runtime, keras_classes, train_and_evaluate

from .conftest import build_run


def run(config):
    """Train and evaluate one config in-process."""
    dataset, plan = build_run(config)
    return train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed)


def test_same_seed_same_metrics(tiny_config):
    config = tiny_config("backbone=vgg16", "strategy=partial_finetune", "seed=3")
    first = run(config).metrics
    second = run(config).metrics
    for key in ("test_accuracy", "val_accuracy", "train_accuracy", "test_macro_f1"):
        assert first[key] == pytest.approx(second[key], abs=1e-6), key
    assert first["params_trainable"] == second["params_trainable"]


def test_metrics_and_timing_are_reported(tiny_config):
    config = tiny_config("backbone=vgg16", "strategy=partial_finetune", "trainer.epochs=2")
    result = run(config)
    metrics = result.metrics
    assert metrics["epochs_run"] == 4 and len(result.history) == 4
    assert [epoch["phase"] for epoch in result.history] == ["head", "head", "finetune", "finetune"]
    assert metrics["first_epoch_seconds"] > 0 and metrics["steady_epoch_seconds"] > 0
    assert metrics["fit_seconds"] >= metrics["first_epoch_seconds"]
    assert metrics["train_images_per_second"] == pytest.approx(25 * 4 / metrics["fit_seconds"])
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"], metrics["n_classes"]) == (
        25, 90, 180, 5)  # the default target: digits 5-9
    assert result.confusion.sum() == 180
    assert metrics["test_accuracy"] == np.trace(result.confusion) / 180  # counted on that matrix
    assert metrics["params_total"] == metrics["params_trainable"] + metrics["params_non_trainable"]


EASY = ["backbone=pixels", "strategy=feature_extraction", "data.classes=[5,6]",
        "data.train_size=20", "trainer.epochs=5"]
"""Digits 5 and 6 from their pixels: a linear head must learn it (chance is 0.5)."""


def run_as_the_cli_does(config):
    """Prepare and train one config in-process as `python -m tlbench` does (the strategy's own
    route: a pixels backbone trains on its flattened pixels, the head's standardisation
    adapted), without tracking."""
    from tlbench import strategy
    from tlbench.prepare import prepare

    adapt = strategy.for_run(config)
    weights = adapt.weights(config.backbone.entry(), config.backbone.weights)
    return adapt.train(prepare(config, weights, config.trainer.threads))


def test_training_learns_a_task_a_linear_head_can(tiny_config):
    metrics = run_as_the_cli_does(tiny_config(*EASY)).metrics
    assert metrics["train_accuracy"] > 0.9 and metrics["test_accuracy"] > 0.8


@pytest.mark.slow
def test_mobilenetv2_batchnorm_momentum_override_prevents_collapse(tiny_config):
    """Keras' 0.999 momentum leaves moving stats near init after ~40 steps: eval at chance
    (measured 0.10 on these settings with backbone.bn_momentum=0.999). The packaged 0.9 does not
    collapse. (That the override reaches every layer: tests/test_backbone.py.)"""
    config = tiny_config("data=digits", "backbone=mobilenetv2", "strategy=scratch",
                         "data.train_size=30", "trainer.epochs=6", "trainer.batch_size=16")
    assert config.backbone.bn_momentum == 0.9
    assert run(config).metrics["test_accuracy"] > 0.4


def test_runs_release_the_graphs_earlier_runs_traced(tiny_config):
    """Graph-mode fit leaves CustomGradient closures in TensorFlow's gradient registry, each
    pinning a traced train step (~200 MiB per run); the next run's setup drops them."""
    from tensorflow.python.framework import ops

    def leftovers() -> int:
        return sum(name.startswith("CustomGradient-") for name in ops._gradient_registry._registry)

    run(tiny_config("backbone=vgg16", "strategy=feature_extraction"))
    assert leftovers() > 0  # what the leak is made of: still there after fit and clear_session
    keras.backend.clear_session()
    configure_runtime(tiny_config().trainer, seed=0, threads=None)
    assert leftovers() == 0


def test_a_reused_head_at_many_steps_per_call_trains_as_a_fresh_one(tiny_config, monkeypatch):
    """A head plan on features (64 batches per call, and with reuse_key set the compiled model
    of an earlier run reused) gives the same epochs, weights and predictions as a fresh model
    stepping one batch per call."""
    import numpy as np

    from tlbench.data import Dataset
    from tlbench.strategy.base import head_layers
    from tlbench.training.plan import Phase, Plan, keep

    config = tiny_config("trainer.epochs=3", "strategy.head.units=16", "strategy.head.dropout=0.3")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(150, 8)).astype(np.float32), rng.integers(0, 3, 150)
    data = Dataset(Rows.of(x[:100]), y[:100], Rows.of(x[100:]), y[100:], Rows.of(x[100:]),
                   y[100:], ("a", "b", "c"))
    monkeypatch.setattr(train, "COMPILED", {})

    def trained(reuse_key, lr):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), head_layers(3, config.strategy.head)])
        plan = Plan(model, [Phase("head", 3, lr, keep, inputs="features")], inputs="features",
                    reuse_key=reuse_key)
        result = train_and_evaluate(plan, {"features": data}, config.trainer, 0)
        return result, [v.numpy() for v in plan.model.variables], plan.model

    with monkeypatch.context() as one_per_call:
        one_per_call.setattr(train, "HEAD_STEPS_PER_CALL", 1)
        fresh, fresh_weights, stepped = trained(None, 0.01)
    assert stepped.steps_per_execution == 1 and not train.COMPILED  # no key: not kept
    _, _, compiled = trained(("toy",), 0.05)  # compiled at 64 steps per call, at another rate
    reused, reused_weights, model = trained(("toy",), 0.01)
    assert model is compiled and compiled.steps_per_execution == 64
    assert reused.history == fresh.history
    for a, b in zip(fresh_weights, reused_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reused.confusion, fresh.confusion)


def test_compiled_models_beyond_the_byte_budget_are_dropped_oldest_first(tiny_config,
                                                                         monkeypatch):
    """The process keeps compiled models up to COMPILED_BYTES, dropping the least recently used
    first, and always keeps the newest."""
    import numpy as np

    from tlbench.data import Dataset
    from tlbench.training.plan import Phase, Plan, keep

    config = tiny_config()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 100)).astype(np.float32), rng.integers(0, 2, 40)
    data = Dataset(Rows.of(x), y, Rows.of(x), y, Rows.of(x), y, ("a", "b"))
    monkeypatch.setattr(train, "COMPILED", {})

    def trained(key: str) -> None:
        model = keras.Sequential([keras.Input((100,)), keras.layers.Dense(2, activation="softmax")])
        plan = Plan(model, [Phase("head", 1, 0.01, keep, inputs="features")], inputs="features",
                    reuse_key=(key,))
        train_and_evaluate(plan, {"features": data}, config.trainer, 0)

    def kept() -> list[str]:
        return [key[0][0] for key in train.COMPILED]

    trained("a")
    one = train._held_bytes(next(iter(train.COMPILED.values())))
    assert one > 3 * 4 * 202  # weights and two Adam moments
    monkeypatch.setattr(train, "COMPILED_BYTES", 2 * one)
    trained("b")
    trained("a")  # reused: now the most recently used
    trained("c")
    assert kept() == ["a", "c"]
    monkeypatch.setattr(train, "COMPILED_BYTES", one // 2)
    trained("d")
    assert kept() == ["d"]


@pytest.mark.parametrize("load_bytes", [batches.LOAD_BYTES, 0])
def test_one_prediction_over_several_arrays_keeps_each_arrays_rows(load_bytes, monkeypatch):
    """keras_classes predicts train, val and test in one call (their rows in memory, or streamed
    above LOAD_BYTES): each split's classes come back whole, in order, as separate predictions
    give them."""
    monkeypatch.setattr(batches, "LOAD_BYTES", load_bytes)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs))
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 6)).astype("float32") for n in (37, 5, 70)]
    predicted = keras_classes(model, batch_size=16)([Rows.of(x) for x in arrays])
    assert [len(p) for p in predicted] == [37, 5, 70]
    for x, classes in zip(arrays, predicted, strict=True):
        np.testing.assert_array_equal(classes, np.argmax(model.predict(x, verbose=0), axis=1))


def test_only_a_run_after_another_collects_garbage(tiny_config, monkeypatch):
    """The first run of a process freezes what is imported without a full collection (0.4 s);
    each later run collects what earlier runs left, then freezes again."""
    import gc

    from tlbench import runtime

    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    monkeypatch.setattr(runtime, "CONFIGURED_RUNS", 0)  # as in a fresh process
    gc.disable()  # no automatic collections: any counted one is the run's own
    gc.callbacks.append(count)
    try:
        configure_runtime(tiny_config().trainer, seed=0, threads=None)
        assert collections == [] and gc.get_freeze_count() > 0
        configure_runtime(tiny_config().trainer, seed=0, threads=None)
        assert collections == [2]
    finally:
        gc.callbacks.remove(count)
        gc.enable()
