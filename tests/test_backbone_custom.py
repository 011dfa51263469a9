"""backbone=keras_file: your saved .keras model as a backbone (tlbench/backbone/custom.py): the
entry measured on the network, its weights, preprocessing, identity, bad input, custom layers
(backbone.imports), the real CLI."""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap

import keras
import numpy as np
import pytest

from tlbench.backbone import build_base
from tlbench.config import parse_config
from tlbench.errors import TlbenchError
from tlbench.tracking.identity import config_hash, effective_weights, identity

from .conftest import TINY, compose_config
from .test_cli import assert_one_line_error, runs_of, tlbench


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
    """A .keras classifier and bad model files."""
    folder = tmp_path_factory.mktemp("models")
    tiny_classifier().save(folder / "tiny.keras")
    tiny_classifier(side=48).save(folder / "fixed48.keras")
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                      keras.layers.Dense(4)]).save(folder / "dense.keras")
    keras.Sequential([keras.Input((20,)), keras.layers.Dense(4)]).save(folder / "vector.keras")
    (folder / "junk.keras").write_text("not a model")
    conv = tiny_classifier(side=32)
    inner = keras.Model(conv.input, conv.get_layer("block2_relu").output, name="inner")
    keras.Sequential([keras.Input((32, 32, 3)), inner, keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(3)]).save(folder / "nested.keras")
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


def test_a_nested_base_is_the_backbone_itself(files):
    """Sequential([a base model, pooling, Dense]): the base's own layers, so stages still work."""
    entry = file_config(files, path="nested.keras").backbone.entry()
    base = build_base(entry, 32, None, None)
    assert entry.stages == (2, 4, 8) and base.get_layer("block1_conv").trainable


def test_keras_file_weights_file_random_and_scratch(files):
    own = file_config(files, "backbone.weights=file")
    assert own.backbone.weights == str(files / "tiny.keras")
    entry = own.backbone.entry()
    saved = keras.saving.load_model(files / "tiny.keras").get_weights()[:18]  # without the top
    loaded = build_base(entry, 32, own.backbone.weights, None).get_weights()
    assert len(loaded) == 18  # 3 x (conv kernel, bias, 4 BatchNorm arrays)
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded, strict=True))
    keras.utils.set_random_seed(1)
    fresh = build_base(entry, 32, None, None).get_weights()
    assert not np.array_equal(fresh[0], saved[0])
    scratch = file_config(files, "backbone.weights=file", "strategy=scratch")
    assert effective_weights(scratch) is None


def test_source_checkpoints_are_kept_per_model_file(files):
    """Two .keras files are two networks: their source checkpoints never share a cache folder."""
    from tlbench.pretrain import checkpoint_dir

    tiny, nested = (file_config(files, "backbone.weights=source:digits04", path=path)
                    for path in ("tiny.keras", "nested.keras"))
    assert checkpoint_dir(tiny.backbone, "digits04", tiny.pretrain) != checkpoint_dir(
        nested.backbone, "digits04", nested.pretrain)


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
    imported = file_config(tmp_path, "backbone.imports=[json]", path="model.keras")
    assert config_hash(imported) == config_hash(file_config(tmp_path, path="model.keras"))
    assert "imports" not in identity(imported)["backbone"]  # the file is the network


@pytest.mark.parametrize(("path", "message"), [
    ("missing.keras", "missing.keras: no such file"),
    ("junk.keras", "junk.keras: not a saved Keras model (a .keras file is a zip archive; "
                   "this one is not)"),
    ("dense.keras", "dense.keras: no layer outputs a feature map"),
    ("vector.keras", "vector.keras: the model takes inputs of shape [(None, 20)], not one batch "
                     "of RGB images"),
])
def test_bad_model_files_are_one_line(files, path, message):
    with pytest.raises(TlbenchError, match=re.escape(message)):
        file_config(files, path=path)


def test_keras_file_settings_are_checked(files):
    with pytest.raises(TlbenchError, match="backbone.path=None is invalid"):
        parse_config(compose_config([*TINY, "backbone=keras_file"]))
    with pytest.raises(TlbenchError, match="backbone.preprocess='inception' is invalid: expected "
                                           "one of caffe, none, scale, tf, torch"):
        file_config(files, "backbone.preprocess=inception")
    with pytest.raises(TlbenchError, match="backbone.weights='imagenet' is invalid"):
        file_config(files, "backbone.weights=imagenet")


def test_keras_file_runs_through_the_cli(files, tmp_path):
    """Feature extraction, partial fine-tuning and full retraining of your .keras model (its own
    weights) through the real CLI. (A bad file through the CLI: the test of custom layers without
    their import below; every bad file in process: test_bad_model_files_are_one_line.)"""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", "strategy=feature_extraction,partial_finetune,full_retrain",
                     "data=digits59", "data.classes=[5,6]", "data.train_size=5",
                     "trainer.epochs=1", "trainer.patience=null", "backbone=keras_file",
                     f"backbone.path={files / 'tiny.keras'}", "backbone.weights=file",
                     cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {r.info.run_name.removeprefix("keras_file-").removesuffix("-n5-s0"): r
            for r in runs_of(uri)}
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 3
    trainable = [runs[s].data.metrics["params_trainable"]
                 for s in ("feature_extraction", "partial_finetune", "full_retrain")]
    assert trainable == sorted(set(trainable))
    run = runs["partial_finetune"]
    assert run.data.params["backbone.path"] == str(files / "tiny.keras")
    assert run.data.params["backbone.preprocess"] == "none"
    assert run.data.tags["inputs"] == "cut" and run.data.tags["weights.kind"] == "file"
    assert "I0000" not in result.stderr  # Keras, imported to check the file, imported quietly


LAYERS = "tlbench_test_layers"
LAYERS_SOURCE = textwrap.dedent('''
    import keras


    @keras.saving.register_keras_serializable(package="tlbench_test")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=0.5, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}


    class Shift(keras.layers.Layer):  # not registered: Keras saves it by its class name
        def call(self, x):
            return x + 1.0
    ''')


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """A folder with a module of custom layers (one registered, one not) and custom.keras, a
    conv classifier (strides 2, 4) using both."""
    folder = tmp_path_factory.mktemp("custom")
    (folder / f"{LAYERS}.py").write_text(LAYERS_SOURCE)
    spec = importlib.util.spec_from_file_location(LAYERS, folder / f"{LAYERS}.py")
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)  # not in sys.modules: backbone.imports must import it
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = layers.Scale(name="scale")(keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs))
    x = layers.Shift(name="shift")(keras.layers.Conv2D(8, 3, strides=2, padding="same")(x))
    x = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, x).save(folder / "custom.keras")
    return folder


def test_imports_load_custom_layers_from_the_current_directory(custom, monkeypatch):
    """Registered and unregistered classes, from the folder the command runs in (a console
    script has no current directory on sys.path), with the file's weights and random ones."""
    monkeypatch.chdir(custom)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(custom))])
    config = file_config(custom, f"backbone.imports=[{LAYERS}]", "backbone.weights=file",
                         path="custom.keras")
    entry = config.backbone.entry()
    base = build_base(entry, 32, config.backbone.weights, None)
    assert [type(layer).__name__ for layer in base.layers[-2:]] == ["Conv2D", "Shift"]
    assert base.get_layer("scale").factor == 0.5 and entry.stages == (2, 4)
    saved = keras.saving.load_model(custom / "custom.keras").get_weights()[:4]
    assert all(np.array_equal(a, b) for a, b in zip(saved, base.get_weights(), strict=True))
    assert build_base(entry, 32, None, None).get_layer("shift").built  # random init: a clone


def test_a_class_keras_cannot_find_is_one_line_naming_it(tmp_path):
    class NotImported(keras.layers.Layer):
        def call(self, x):
            return x

    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, NotImported()(keras.layers.Conv2D(4, 3)(inputs))).save(
        tmp_path / "missing.keras")
    with pytest.raises(TlbenchError, match=re.escape(
            "missing.keras: Keras cannot find the class 'NotImported' that the model uses; "
            f"pass backbone.imports=[{__name__}] (the Python module that defines it")):
        file_config(tmp_path, path="missing.keras")


@pytest.mark.parametrize(("imports", "message"), [
    ("[no_such_module_here]", "backbone.imports: no module 'no_such_module_here' in the current "
                              "directory ("),
    ("[broken_layers]", "backbone.imports: importing 'broken_layers' failed "
                        "(ModuleNotFoundError: No module named 'no_such_dependency'); python -c "
                        "'import broken_layers' shows the traceback."),
    ("[my_layers.py]", "backbone.imports='my_layers.py' is invalid: expected a Python module name"),
    ("my_layers", "backbone.imports='my_layers' is invalid: expected a list, e.g. "
                  "backbone.imports=[my_layers]."),
])
def test_bad_imports_are_one_line(files, tmp_path, monkeypatch, imports, message):
    (tmp_path / "broken_layers.py").write_text("import no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(TlbenchError, match=re.escape(message)):
        file_config(files, f"backbone.imports={imports}")


def test_custom_layers_run_through_the_cli(custom, tmp_path):
    """The user's command, run from the folder with their module and model."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("data=digits59", "data.classes=[5,6]", "data.train_size=5",
                     "trainer.epochs=1", "trainer.patience=null", "backbone=keras_file",
                     "backbone.path=custom.keras",
                     f"backbone.imports=[{LAYERS}]", "backbone.weights=file", cwd=custom, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = runs_of(uri)
    assert run.info.status == "FINISHED" and run.data.tags["weights.kind"] == "file"
    assert f"backbone.imports=[{LAYERS}]" in run.data.tags["command"]
    assert "backbone.imports" not in run.data.params


def test_custom_layers_without_their_import_are_one_line(custom, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("backbone=keras_file", f"backbone.path={custom / 'custom.keras'}",
                     "backbone.weights=file", cwd=tmp_path, uri=uri)
    assert_one_line_error(result, "Keras cannot find the class 'Scale' that the model uses; "
                                  f"pass backbone.imports=[{LAYERS}]")
    assert result.stderr.strip().splitlines()[-1].startswith("tlbench: error: backbone.path=")
    assert runs_of(uri) == []
