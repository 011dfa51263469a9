"""The registry binds each backbone's preprocessing, range, stages and weights loading correctly."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from tlbench.backbone import (
    BACKBONES,
    NETWORKS,
    build_base,
    preprocess,
    unfreeze_top,
    weights_kind,
)
from tlbench.errors import TlbenchError

NAMES = sorted(NETWORKS)


@pytest.fixture(scope="module")
def bases():
    """One random-init 32px base per backbone, built once for the module."""
    return {name: build_base(BACKBONES[name], 32, None, None) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_stages_cover_every_weighted_layer_in_order(bases, name):
    spec = BACKBONES[name]
    stages = [spec.stage_of(layer.name) for layer in bases[name].layers if layer.weights]
    assert None not in stages
    assert stages == sorted(stages) and set(stages) == set(range(1, len(spec.stages) + 1))


@pytest.mark.parametrize("name", NAMES)
def test_preprocess_maps_0_255_into_the_backbone_range(name):
    spec = BACKBONES[name]
    images = np.stack([np.zeros((32, 32, 3)), np.full((32, 32, 3), 255.0),
                       np.random.default_rng(0).uniform(0, 255, (32, 32, 3))]).astype("float32")
    out = preprocess(spec, images)
    low, high = spec.preprocessed_range
    assert low - 1e-3 <= out.min() and out.max() <= high + 1e-3
    assert out.max() - out.min() > 0.9 * (high - low)
    assert images.max() == 255.0  # the caller's array is not modified in place


def test_mobilenetv2_bn_momentum_override(bases):
    momentums = {layer.momentum for layer in bases["mobilenetv2"].layers
                 if isinstance(layer, keras.layers.BatchNormalization)}
    assert momentums == {0.999}  # Keras' hard-coded value, kept when bn_momentum is null
    tuned = build_base(BACKBONES["mobilenetv2"], 32, None, 0.9)
    assert {layer.momentum for layer in tuned.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}


@pytest.mark.parametrize("name", ["mobilenetv2", "vgg16"])
def test_weights_file_loads_exact_values(tmp_path, name):
    spec = BACKBONES[name]
    keras.utils.set_random_seed(1)
    source = build_base(spec, 32, None, None)
    path = tmp_path / "base.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = build_base(spec, 32, str(path), None)
    for expected, actual in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_missing_weights_file_is_one_line(tmp_path):
    with pytest.raises(TlbenchError, match="no such file") as err:
        build_base(BACKBONES["vgg16"], 32, str(tmp_path / "nope.h5"), None)
    assert "\n" not in str(err.value)


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "vgg.weights.h5"
    build_base(BACKBONES["vgg16"], 32, None, None).save_weights(path)
    with pytest.raises(TlbenchError, match="cannot load into headless mobilenetv2"):
        build_base(BACKBONES["mobilenetv2"], 32, str(path), None)


@pytest.mark.parametrize("blocks", [1, 2])
def test_unfreeze_top_keeps_lower_stages_and_batchnorm_frozen(bases, blocks):
    spec = BACKBONES["resnet50"]
    base = bases["resnet50"]
    unfreeze_top(base, spec, blocks, None)
    first = len(spec.stages) - blocks + 1
    for layer in base.layers:
        if not layer.weights:
            continue
        expected = (spec.stage_of(layer.name) >= first
                    and not isinstance(layer, keras.layers.BatchNormalization))
        assert layer.trainable == expected, layer.name
    base.trainable = True


def test_unfreeze_fraction_counts_layers_from_the_top(bases):
    base = bases["vgg16"]
    unfreeze_top(base, BACKBONES["vgg16"], None, 0.2)
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3"]  # 3 of 13
    base.trainable = True


class _Fetched(Exception):
    """Raised by the stand-in get_file once it has recorded what Keras asked for."""


@pytest.mark.parametrize(("name", "size"), [("resnet50", 32), ("mobilenetv2", 32),
                                            ("mobilenetv2", 96), ("efficientnetb0", 32),
                                            ("vgg16", 32)])
def test_imagenet_file_is_the_one_keras_asks_for(monkeypatch, name, size):
    from keras.src.utils import file_utils

    asked = []

    def get_file(fname, origin, **kwargs):
        asked.append((fname, kwargs.get("cache_subdir")))
        raise _Fetched

    monkeypatch.setattr(file_utils, "get_file", get_file)
    spec = BACKBONES[name]
    with pytest.raises(_Fetched), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MobileNetV2 warns that 32px loads the 224 weights
        spec.build((size, size, 3), weights="imagenet")
    assert asked == [(spec.imagenet_file(size), "models")]


@pytest.mark.parametrize(("weights", "kind"), [(None, "none"), ("imagenet", "imagenet"),
                                               ("source:digits04", "source"),
                                               ("/tmp/base.weights.h5", "file")])
def test_weights_kind(weights, kind):
    assert weights_kind(weights) == kind


@pytest.mark.parametrize("keras_home", ["{tmp}/kh", None])
def test_keras_models_dir_matches_keras(tmp_path, keras_home):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_HOME"}
    if keras_home:
        env["KERAS_HOME"] = keras_home.format(tmp=tmp_path)
    script = ("from keras.src.backend.config import keras_home; import os; "
              "from tlbench.backbone import keras_models_dir; "
              "print(os.path.join(os.path.expanduser(keras_home()), 'models')); "
              "print(keras_models_dir())")
    out = subprocess.run([sys.executable, "-c", script], env=env, text=True, capture_output=True,
                         check=True).stdout.split()
    assert out[0] == out[1]
