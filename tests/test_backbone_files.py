"""Networks read from a file: your saved .keras model (backbone=keras_file) and a local KerasHub
preset (backbone=kerashub): entries measured on the network, weights, identity, bad input, and the
real CLI."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlbench.backbone import build_base
from tlbench.config import parse_config
from tlbench.errors import TlbenchError
from tlbench.identity import config_hash

from .conftest import TINY, compose_config
from .test_cli import assert_one_line_error, runs_of, tlbench

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is not installed: pip install "
                                                    "-e '.[test]' (or '.[hub]')")


def tiny_classifier(seed: int = 0, side: int | None = None):
    """A small conv net with a classifier top (pooling, Dense), strides 2, 4, 8."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((side, side, 3))
    x = inputs
    for index, filters in enumerate((8, 16, 32)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same",
                                name=f"block{index}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{index}_bn")(x)
        x = keras.layers.ReLU(name=f"block{index}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="predictions")(x))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A .keras classifier, bad model files, and a tiny KerasHub ResNet preset."""
    folder = tmp_path_factory.mktemp("models")
    tiny_classifier().save(folder / "tiny.keras")
    tiny_classifier(side=48).save(folder / "fixed48.keras")
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                      keras.layers.Dense(4)]).save(folder / "dense.keras")
    keras.Sequential([keras.Input((20,)), keras.layers.Dense(4)]).save(folder / "vector.keras")
    (folder / "junk.keras").write_text("not a model")
    preset = folder / "preset"
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block").save_to_preset(str(preset))
    keras_hub.layers.ResNetImageConverter(scale=1 / 127.5, offset=-1.0).save_to_preset(str(preset))
    (folder / "not_a_preset").mkdir()
    (folder / "junk_preset").mkdir()
    (folder / "junk_preset" / "config.json").write_text(json.dumps({"class_name": "Nothing"}))
    return folder


def file_config(files, *overrides: str, path: str = "tiny.keras"):
    """A validated keras_file RunConfig (random init unless overridden)."""
    return parse_config(compose_config([*TINY, "backbone=keras_file",
                                        f"backbone.path={files / path}", *overrides]))


def test_keras_file_cuts_the_top_and_derives_stages(files):
    entry = file_config(files).backbone.entry()
    base = build_base(entry, 32, None, None)
    assert base.output.shape == (None, 4, 4, 32)  # pooling and Dense cut off
    assert entry.stages == (2, 4, 8) and entry.min_input_size == 32 and entry.cut_at_one_tensor
    assert entry.stages_in(base)["block2_conv"] == 3 and entry.stages_in(base)["block0_bn"] == 1


def test_keras_file_weights_file_random_and_scratch(files):
    own = file_config(files, "backbone.weights=file")
    assert own.backbone.weights == str(files / "tiny.keras")
    entry = own.backbone.entry()
    saved = keras.saving.load_model(files / "tiny.keras").get_weights()[:12]  # without the top
    loaded = build_base(entry, 32, own.backbone.weights, None).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded, strict=True))
    keras.utils.set_random_seed(1)
    fresh = build_base(entry, 32, None, None).get_weights()
    assert not np.array_equal(fresh[0], saved[0])
    scratch = file_config(files, "backbone.weights=file", "strategy=scratch")
    from tlbench.identity import effective_weights

    assert effective_weights(scratch) is None


def test_fixed_input_side_is_the_minimum_and_the_only_size(files):
    config = file_config(files, "data.input_size=48", path="fixed48.keras")
    assert config.backbone.entry().min_input_size == 48
    with pytest.raises(TlbenchError, match="backbone.input_size=32 is invalid: expected at least"):
        file_config(files, path="fixed48.keras")


@pytest.mark.parametrize(("overrides", "ends"), [
    (["backbone.preprocess=tf"], (-1.0, 1.0)),
    (["backbone.preprocess=none"], (0.0, 255.0)),
    (["backbone.preprocess=scale", "backbone.scale=0.004", "backbone.offset=-0.5"], (-0.5, 0.52)),
    (["backbone.preprocess=torch"], None),
    (["backbone.preprocess=caffe"], None),
])
def test_preprocess_maps_0_255_into_the_stated_range(files, overrides, ends):
    entry = file_config(files, *overrides).backbone.entry()
    images = np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 255.0)]).astype("float32")
    out = entry.preprocess(images)
    low, high = entry.preprocessed_range
    assert low - 1e-3 <= out.min() and out.max() <= high + 1e-3
    if ends:
        assert (out.min(), out.max()) == pytest.approx(ends) == (low, high)


def test_config_hash_follows_the_file_content(files, tmp_path):
    path = tmp_path / "model.keras"
    tiny_classifier(seed=0).save(path)
    first = config_hash(file_config(tmp_path, path="model.keras"))
    assert config_hash(file_config(tmp_path, path="model.keras")) == first
    tiny_classifier(seed=1).save(path)
    assert config_hash(file_config(tmp_path, path="model.keras")) != first


@pytest.mark.parametrize(("path", "message"), [
    ("missing.keras", "missing.keras: no such file"),
    ("junk.keras", "junk.keras: not a saved Keras model"),
    ("dense.keras", "dense.keras: no layer outputs a feature map"),
    ("vector.keras", "vector.keras: the model takes inputs of shape [(None, 20)], not one batch "
                     "of RGB images"),
])
def test_bad_model_files_are_one_line(files, path, message):
    with pytest.raises(TlbenchError, match=message):
        file_config(files, path=path)


def test_keras_file_settings_are_checked(files):
    with pytest.raises(TlbenchError, match="backbone.path=None is invalid"):
        parse_config(compose_config([*TINY, "backbone=keras_file"]))
    with pytest.raises(TlbenchError, match="backbone.preprocess='inception' is invalid: expected "
                                           "one of caffe, none, scale, tf, torch"):
        file_config(files, "backbone.preprocess=inception")
    with pytest.raises(TlbenchError, match="backbone.weights='imagenet' is invalid"):
        file_config(files, "backbone.weights=imagenet")


def hub_config(files, *overrides: str, preset: str = "preset"):
    """A validated kerashub RunConfig."""
    return parse_config(compose_config([*TINY, "backbone=kerashub",
                                        f"backbone.preset={files / preset}", *overrides]))


def test_kerashub_entry_uses_the_preset_converter_and_weights(files):
    config = hub_config(files, "backbone.weights=preset")
    entry = config.backbone.entry()
    assert entry.preprocessed_range == pytest.approx((-1.0, 1.0))  # scale 1/127.5, offset -1
    assert entry.stages == (2, 4, 8, 16, 32) and entry.cut_at_one_tensor
    base = build_base(entry, 32, config.backbone.weights, None)
    preset = keras_hub.models.Backbone.from_preset(str(files / "preset"))
    assert np.array_equal(base.get_weights()[0], preset.get_weights()[0])
    assert base.input.shape == (None, 32, 32, 3)


@pytest.mark.parametrize(("preset", "message"), [
    ("missing", "missing: no such folder"),
    ("not_a_preset", "not_a_preset: not a KerasHub preset \\(no config.json\\)"),
    ("junk_preset", "junk_preset: not a KerasHub backbone preset"),
])
def test_bad_presets_are_one_line(files, preset, message):
    with pytest.raises(TlbenchError, match=message):
        hub_config(files, preset=preset)


def test_keras_file_and_kerashub_run_through_the_cli(files, tmp_path):
    """Feature extraction and partial fine-tuning of your .keras model (its own weights) and of
    a KerasHub preset, through the real CLI; a bad file exits with one line."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["-m", "strategy=feature_extraction,partial_finetune", "data=digits59",
              "data.train_size=5", "trainer.epochs=1", "trainer.patience=null"]
    result = tlbench(*common, "backbone=keras_file", f"backbone.path={files / 'tiny.keras'}",
                     "backbone.weights=file", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    result = tlbench(*common, "backbone=kerashub", f"backbone.preset={files / 'preset'}",
                     "backbone.weights=preset", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {r.info.run_name: r for r in runs_of(uri)}
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 4
    for name in ("keras_file", "kerashub"):
        frozen, partial = (runs[f"{name}-{s}-n5-s0"].data.metrics["params_trainable"]
                           for s in ("feature_extraction", "partial_finetune"))
        assert frozen < partial
    run = runs["keras_file-partial_finetune-n5-s0"]
    assert run.data.params["backbone.path"] == str(files / "tiny.keras")
    assert run.data.tags["inputs"] == "cut" and run.data.tags["weights.kind"] == "file"
    assert MlflowClient(uri).get_run(run.info.run_id).data.params["backbone.preprocess"] == "none"
    bad = tlbench("backbone=keras_file", f"backbone.path={files / 'junk.keras'}", cwd=tmp_path,
                  uri=uri)
    assert_one_line_error(bad, "junk.keras: not a saved Keras model")
