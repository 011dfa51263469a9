"""Strategies freeze what they say, keep BatchNorm in inference mode and recompile after changes."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tlbench.training.train import count_params, fit

from .conftest import assert_trained_alike, backend_or_skip, build_run, strategy_model


def trainable_after_setup(plan) -> int:
    """Trainable parameters of the last phase, after its flags are set and the model recompiled."""
    for phase in plan.phases:
        phase.set_trainable()
    plan.model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return count_params(plan.model)["params_trainable"]


@pytest.mark.parametrize("backbone", ["mobilenetv2", "vgg16"])
def test_trainable_counts_are_ordered(tiny_config, backbone):
    counts = {
        name: trainable_after_setup(build_run(tiny_config(f"backbone={backbone}",
                                                          f"strategy={name}"))[1])
        for name in ("feature_extraction", "partial_finetune", "full_retrain", "scratch")
    }
    assert counts["feature_extraction"] < counts["partial_finetune"] < counts["full_retrain"]
    assert counts["full_retrain"] == counts["scratch"]


def test_partial_finetune_has_two_phases_with_scaled_lr(tiny_config):
    _, plan = build_run(tiny_config("strategy=partial_finetune", "strategy.lr_scale=0.1",
                                    "trainer.lr=0.01"))
    assert [(p.name, p.lr) for p in plan.phases] == [("head", 0.01), ("finetune", 0.001)]


def batchnorm_statistics(model) -> list[np.ndarray]:
    """Moving mean and variance of every BatchNorm layer in the model."""
    base = strategy_model(model).layers[1]
    return [keras.ops.convert_to_numpy(w) for layer in base.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize(("strategy", "frozen"), [
    ("feature_extraction", True), ("partial_finetune", True), ("full_retrain", False)])
def test_batchnorm_statistics_move_only_when_the_base_trains(tiny_config, strategy, frozen):
    dataset, plan = build_run(tiny_config("backbone=mobilenet", f"strategy={strategy}"))
    before = batchnorm_statistics(plan.model)
    fit(plan, {"images": dataset}, tiny_config().trainer, seed=0)
    after = batchnorm_statistics(plan.model)
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert unchanged == frozen


def test_partial_finetune_trains_only_top_stage_weights(tiny_config):
    dataset, plan = build_run(tiny_config("backbone=vgg16", "strategy=partial_finetune"))
    base = strategy_model(plan.model).layers[1]
    before = {layer.name: [keras.ops.convert_to_numpy(w) for w in layer.weights]
              for layer in base.layers}
    fit(plan, {"images": dataset}, tiny_config().trainer, seed=0)
    changed = {layer.name for layer in base.layers
               if any(not np.array_equal(a, keras.ops.convert_to_numpy(b))
                      for a, b in zip(before[layer.name], layer.weights, strict=True))}
    assert changed == {"block5_conv1", "block5_conv2", "block5_conv3"}


def test_augmentation_runs_before_the_base_and_turns_the_caches_off(tiny_config):
    from tlbench import registry, strategy

    config = tiny_config("backbone=vgg16", "strategy=partial_finetune", "trainer.augment=true")
    route = strategy.for_run(config).route(config, registry.BACKBONES["vgg16"])
    assert route.inputs == "images" and "trainer.augment=true" in route.reason
    dataset, plan = build_run(config)
    augment = strategy_model(plan.model).get_layer("augmentation")
    pixels = dataset.x_test.read(slice(0, 4))
    x = plan.model.get_layer("preprocess")(pixels)
    np.testing.assert_array_equal(augment(x, training=False), x)  # inference sees the image
    assert not np.allclose(augment(x, training=True), x)
    np.testing.assert_allclose(plan.model(pixels, training=False),
                               plan.model(pixels, training=False))


def photo_crops(root, per_class: int = 80, size: int = 64) -> None:
    """Two classes of crops from scikit-learn's sample photos (china, flower), as PNG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(0)
    for name, photo in zip(("china", "flower"), photos.images, strict=True):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            y = rng.integers(0, photo.shape[0] - size)
            x = rng.integers(0, photo.shape[1] - size)
            Image.fromarray(photo[y:y + size, x:x + size]).save(root / name / f"{i}.png")


def test_dense_head_standardises_random_init_features(tmp_path):
    """Random-init MobileNetV2 features have no fixed scale: Adam on them stays near chance;
    standardised with training-split statistics, the same head separates the two photos."""
    from mlflow.tracking import MlflowClient

    from .test_cli import tlbench

    photo_crops(tmp_path / "photos")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", "data=folder", f"data.path={tmp_path / 'photos'}",
                     "data.input_size=32", "backbone.weights=null",
                     "strategy.head.standardize=true,false", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id],
                              "tags.config_hash != ''")  # the jobs, not the sweep's parent run
    accuracy = {r.data.params["strategy.head.standardize"]: r.data.metrics["test_accuracy"]
                for r in runs}
    assert accuracy["False"] == 0.5  # chance on two balanced classes
    assert accuracy["True"] >= 0.7


def test_partial_finetune_on_models_compiled_by_an_earlier_run_trains_as_a_cold_run(
        tiny_config, tmp_path, monkeypatch):
    """A partial fine-tuning run on the cached cut, on the head and top models an earlier run of
    the process compiled (their traced functions reused: a new base's weights copied in, fresh
    optimizer states at each phase's rate), trains exactly what a cold run trains: same epochs'
    losses in both phases, final weights, predictions and parameter counts."""
    from tlbench import strategy
    from tlbench.prepare import prepare
    from tlbench.training import train

    monkeypatch.setattr(train, "COMPILED", {})  # the cold run compiles its own models

    def run(*overrides: str):
        config = tiny_config("backbone=mobilenetv2", "strategy=partial_finetune",
                             "data.train_size=10", "trainer.epochs=2", "strategy.head.units=8",
                             f"cache.dir={tmp_path}", *overrides)
        result = strategy.for_run(config).train(prepare(config, None, None))
        (models,) = train.COMPILED.values()
        return result, [[v.numpy() for v in m.variables] for m in models], \
            [m.train_function for m in models]

    cold, cold_weights, traced = run()
    run("seed=1", "trainer.lr=0.01")  # another base and head in between, on the same models
    warm, warm_weights, traced_again = run()
    assert all(a is b for a, b in zip(traced, traced_again, strict=True))  # nothing retraced
    assert [e["phase"] for e in warm.history] == ["head"] * 2 + ["finetune"] * 2
    for cold_model, warm_model in zip(cold_weights, warm_weights, strict=True):
        for cold_value, warm_value in zip(cold_model, warm_model, strict=True):
            np.testing.assert_array_equal(warm_value, cold_value)
    assert_trained_alike(warm, cold)
    assert warm.metrics["first_epoch_seconds"] < cold.metrics["first_epoch_seconds"]


HEAD_MASKS = """
import sys
import numpy as np
import torch
from tlbench import runtime
from tlbench.config import DenseHeadConfig
from tlbench.strategy.base import head_layers

def trained_outputs(draws: int) -> np.ndarray:
    runtime.set_random_seed(4)
    head = head_layers(3, DenseHeadConfig(name="dense", units=0, dropout=0.5, standardize=False))
    torch.rand(draws)  # anything else drawing from torch's global generator in between
    return np.asarray(head(np.ones((8, 16), "float32"), training=True).cpu().detach())

print(bool(np.array_equal(trained_outputs(0), trained_outputs(1000))))
"""


def test_head_dropout_follows_the_run_seed_on_pytorch():
    """Keras on PyTorch draws an unseeded Dropout's masks from torch's global generator: the
    head's dropout is seeded, so its masks depend on the run's seed alone."""
    backend_or_skip("torch")
    env = os.environ | {"KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", HEAD_MASKS], env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "True"


def test_head_dropout_seed_is_the_one_keras_would_draw():
    """On TensorFlow and JAX the explicit seed changes nothing: it is the draw Keras makes for
    an unseeded layer, from the state the run's seed set."""
    from tlbench import runtime
    from tlbench.strategy.layers import dropout

    runtime.set_random_seed(7)
    seeded = dropout(0.2, name="seeded")
    runtime.set_random_seed(7)
    unseeded = keras.layers.Dropout(0.2)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(seeded.seed_generator.state),
                                  keras.ops.convert_to_numpy(unseeded.seed_generator.state))
