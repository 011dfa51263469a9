"""The registry binds each backbone's preprocessing, range, stages and weights loading correctly."""

from __future__ import annotations

import os
import re
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
    stages_of,
    strides_of,
    unfreeze_top,
    weights_kind,
)
from tlbench.backbone.derived import has_normalization, one_tensor_cuts
from tlbench.errors import TlbenchError

NAMES = sorted(NETWORKS)
# Networks whose layer list interleaves branches of different strides (the stages still rise
# along every path of the graph; checked by test_stride_never_falls_along_the_graph).
INTERLEAVED = {"nasnetlarge", "nasnetmobile"}
# ResNetV2 stacks downsample at their end: its stride-4 stage is the stem's pooling alone.
WEIGHTLESS_STAGE = {"resnet50v2", "resnet101v2", "resnet152v2"}
HEAVY = {"convnextlarge", "convnextxlarge", "efficientnetb7", "efficientnetv2l", "nasnetlarge"}


class Bases(dict):
    """Random-init bases at each backbone's minimum size, each built once, when first asked for."""

    def __missing__(self, name: str):
        spec = BACKBONES[name]
        self[name] = build_base(spec, spec.min_input_size, None, None)
        return self[name]


@pytest.fixture(scope="module")
def bases():
    """One random-init base per backbone at its minimum size, shared by the module's tests."""
    return Bases()


EVERY = [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in NAMES]


@pytest.mark.parametrize("name", EVERY)
def test_source_pretraining_decision_matches_the_network(bases, name):
    """An entry refuses backbone.weights=source:<name> (`normalized` false) exactly when its
    network has no normalisation layer."""
    assert BACKBONES[name].normalized == has_normalization(bases[name])


@pytest.mark.parametrize("name", EVERY)
def test_one_tensor_cut_measured_on_the_network_matches_the_entry(bases, name):
    """What derived entries (keras_file, kerashub) measure agrees with every registered entry."""
    spec, base = BACKBONES[name], bases[name]
    assert one_tensor_cuts(base, spec.stages_in(base), len(spec.stages)) == spec.cut_at_one_tensor


@pytest.mark.parametrize("name", EVERY)
def test_stages_derived_from_strides_match_the_entry(bases, name):
    spec = BACKBONES[name]
    base = bases[name]
    strides = strides_of(base, name)
    assert tuple(sorted({s for s in strides.values() if s > 1})) == spec.stages
    stages = [spec.stages_in(base).get(layer.name) for layer in base.layers if layer.weights]
    expected = set(range(1, len(spec.stages) + 1)) - ({2} if name in WEIGHTLESS_STAGE else set())
    assert None not in stages and set(stages) == expected
    if name not in INTERLEAVED:
        assert stages == sorted(stages)
    for layer in base.layers:
        for node in layer._inbound_nodes:
            for parent in node.parent_nodes:
                assert strides[parent.operation.name] <= strides[layer.name], layer.name


def test_stages_of_are_cached_per_backbone(bases, monkeypatch):
    """The graph is traced once per backbone name; without a name, every call traces it."""
    from tlbench.backbone import stages

    traced = []
    trace = stages.traced_strides
    monkeypatch.setattr(stages, "traced_strides", lambda model: traced.append(1) or trace(model))
    monkeypatch.setattr(stages, "_STRIDES", {})
    base = bases["mobilenetv2"]
    first = stages_of(base, "mobilenetv2")
    assert len(traced) == 1
    assert stages_of(base, "mobilenetv2") == first and strides_of(base, "mobilenetv2")
    assert len(traced) == 1  # read from the cache
    assert strides_of(base) == strides_of(base, "mobilenetv2")  # cached equals recomputed
    assert len(traced) == 2


# The stages as they were written by hand before they were derived: the derived ones must
# unfreeze exactly the same weighted layers.
HAND_WRITTEN = {
    "resnet50": (r"conv1_|pool1_", r"conv2_", r"conv3_", r"conv4_", r"conv5_"),
    "mobilenetv2": (r"Conv1|bn_Conv1|Conv1_relu|expanded_conv_", r"block_[12]_", r"block_[345]_",
                    r"block_([6-9]|1[0-2])_", r"block_1[3-6]_|Conv_1|out_relu"),
    "efficientnetb0": (r"rescaling|normalization|stem_|block1", r"block2", r"block3",
                       r"block[45]", r"block[67]|top_"),
    "vgg16": (r"block1_", r"block2_", r"block3_", r"block4_", r"block5_"),
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
@pytest.mark.parametrize("blocks", [1, 2, 3, 4, 5])
def test_derived_stages_unfreeze_what_the_hand_written_did(bases, name, blocks):
    def hand_stage(layer_name: str) -> int:
        return next((i for i, pattern in enumerate(HAND_WRITTEN[name], start=1)
                     if re.match(pattern, layer_name)), 0)

    base = bases[name]
    unfreeze_top(base, BACKBONES[name], blocks, None)
    derived = {layer.name for layer in base.layers if layer.weights and layer.trainable}
    by_hand = {layer.name for layer in base.layers
               if layer.weights and hand_stage(layer.name) >= 6 - blocks
               and not isinstance(layer, keras.layers.BatchNormalization)}
    assert derived == by_hand
    base.trainable = True


def shape_strides(model, size: int) -> dict[str, int]:
    """Output stride of each layer with a spatial output, read off its output shape."""
    return {layer.name: size // layer.output.shape[1] for layer in model.layers
            if len(layer.output.shape) == 4 and layer.output.shape[1] > 1}


# Networks whose blocks downsample first: a layer's stage is exactly its output stride.
@pytest.mark.parametrize("name", ["resnet50", "resnet101", "convnexttiny"])
def test_unfreeze_one_block_is_exactly_the_largest_output_stride(name):
    spec = BACKBONES[name]
    base = build_base(spec, 128, None, None)
    strides = shape_strides(base, 128)
    unfreeze_top(base, spec, 1, None)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    expected = {layer.name for layer in base.layers if layer.weights
                and strides.get(layer.name) == 32  # 128 px in, 4 px out
                and not isinstance(layer, keras.layers.BatchNormalization)}
    assert trainable == expected


# Networks whose blocks downsample at their end (VGG's pool, an inverted residual's depthwise,
# DenseNet's transition):
# the top stage is the stride-32 layers plus the block that leads into them, nothing below 16.
@pytest.mark.parametrize("name", ["vgg19", "mobilenetv2", "efficientnetv2b0", "resnet50v2",
                                  "densenet121"])
def test_unfreeze_one_block_takes_the_block_entering_the_largest_stride(name):
    spec = BACKBONES[name]
    base = build_base(spec, 128, None, None)
    strides = shape_strides(base, 128)
    unfreeze_top(base, spec, 1, None)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    top = {layer.name for layer in base.layers if layer.weights and strides.get(layer.name) == 32
           and not isinstance(layer, keras.layers.BatchNormalization)}
    assert top <= trainable
    assert all(strides.get(layer, 32) >= 16 for layer in trainable)


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
        expected = (spec.stages_in(base)[layer.name] >= first
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


@pytest.mark.parametrize(("name", "size"), [
    ("resnet50", 32), ("mobilenetv2", 32), ("mobilenetv2", 96), ("efficientnetb0", 32),
    ("vgg16", 32), ("vgg19", 32), ("resnet101", 32), ("resnet50v2", 32), ("densenet121", 32),
    ("mobilenet", 32), ("mobilenet", 128), ("mobilenetv3small", 32), ("efficientnetb1", 32),
    ("efficientnetv2b0", 32), ("convnexttiny", 32), ("inceptionv3", 75),
    ("inceptionresnetv2", 75), ("xception", 71), ("nasnetmobile", 224)])
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


def test_backbones_command_prints_the_table(capsys):
    from tlbench.cli.backbones import main

    assert main(["--only", "vgg16", "pixels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| vgg16 | vgg | 14.7M | 15.35 | 32 | 224 |")
    assert "32: block5_conv1" in lines[2] and "vgg16_weights_tf_dim_ordering" in lines[2]


def test_backbones_command_counts_nasnet_large_at_its_default_size(capsys):
    """NASNet picks its cropping layers from the size it is built at, so its cost at 331 px is
    traced on a network built at 331 px: 23.8 G multiply-adds, as the NASNet paper reports
    (Zoph et al. 2018, Table 2: NASNet-A (6 @ 4032), 23.8B)."""
    from tlbench.cli.backbones import main

    assert main(["--only", "nasnetlarge"]) == 0
    cells = capsys.readouterr().out.splitlines()[2].split(" | ")
    assert cells[0] == "| nasnetlarge" and round(float(cells[3]), 1) == 23.8 and cells[5] == "331"


def test_backbones_command_unknown_name_is_one_line():
    from tlbench.cli.backbones import main

    with pytest.raises(SystemExit, match="did you mean resnet50") as err:
        main(["--only", "resnet5"])
    assert "\n" not in str(err.value)
