"""Backbone registry: each entry binds its constructor, preprocessing, input range and stages.

Stages are the network's resolution levels (output stride 2, 4, 8, 16, 32), so "unfreeze the top
1 stage" means the same thing on every backbone. Keras is imported lazily: the registry itself is
static facts, cheap enough to validate configs before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlbench.errors import TlbenchError

if TYPE_CHECKING:
    from tlbench.data import Dataset


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build, feed and partially unfreeze one keras.applications network."""

    name: str
    application: str
    module: str
    preprocessed_range: tuple[float, float]
    default_input_size: int
    min_input_size: int
    stages: tuple[str, ...]
    imagenet_file: str

    def stage_of(self, layer_name: str) -> int | None:
        """The 1-based stage a layer belongs to, or None for layers outside every stage."""
        for index, pattern in enumerate(self.stages, start=1):
            if re.match(pattern, layer_name):
                return index
        return None


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="resnet50",
            application="ResNet50",
            module="resnet50",
            preprocessed_range=(-123.68, 151.061),
            default_input_size=224,
            min_input_size=32,
            stages=(r"conv1_|pool1_", r"conv2_", r"conv3_", r"conv4_", r"conv5_"),
            imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            name="mobilenetv2",
            application="MobileNetV2",
            module="mobilenet_v2",
            preprocessed_range=(-1.0, 1.0),
            default_input_size=224,
            min_input_size=32,
            stages=(
                r"Conv1|bn_Conv1|Conv1_relu|expanded_conv_",
                r"block_[12]_",
                r"block_[345]_",
                r"block_([6-9]|1[0-2])_",
                r"block_1[3-6]_|Conv_1|out_relu",
            ),
            imagenet_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        ),
        BackboneSpec(
            name="efficientnetb0",
            application="EfficientNetB0",
            module="efficientnet",
            preprocessed_range=(0.0, 255.0),
            default_input_size=224,
            min_input_size=32,
            stages=(
                r"rescaling|normalization|stem_|block1",
                r"block2",
                r"block3",
                r"block[45]",
                r"block[67]|top_",
            ),
            imagenet_file="efficientnetb0_notop.h5",
        ),
        BackboneSpec(
            name="vgg16",
            application="VGG16",
            module="vgg16",
            preprocessed_range=(-123.68, 151.061),
            default_input_size=224,
            min_input_size=32,
            stages=(r"block1_", r"block2_", r"block3_", r"block4_", r"block5_"),
            imagenet_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
    )
}


def preprocess(spec: BackboneSpec, images):
    """Map RGB images in [0, 255] to the range the backbone was trained on (preprocess_input)."""
    import keras

    module = getattr(keras.applications, spec.module)
    return module.preprocess_input(images.copy())


def weights_kind(weights: str | None) -> str:
    """Classify a backbone.weights value for logging: imagenet, file or none."""
    if weights is None:
        return "none"
    return "imagenet" if weights == "imagenet" else "file"


def build_base(spec: BackboneSpec, input_size: int, weights: str | None, bn_momentum: float | None):
    """Build the headless network with its weights; BatchNorm momentum overridden if asked."""
    import keras

    constructor = getattr(keras.applications, spec.application)
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        model = _build_imagenet(spec, constructor, shape)
    else:
        model = constructor(include_top=False, weights=None, input_shape=shape)
        if weights is not None:
            _load_weights_file(model, Path(weights), spec)
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model


def _build_imagenet(spec: BackboneSpec, constructor, shape):
    """Let Keras fetch ImageNet weights from its cache or the network; actionable error offline."""
    try:
        return constructor(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as exc:
        if "URL fetch failure" not in str(exc):
            raise
        raise TlbenchError(
            f"backbone.weights=imagenet: {spec.name} weights are not in the Keras cache and cannot "
            f"be downloaded; copy {spec.imagenet_file} into $KERAS_HOME/models (default "
            "~/.keras/models), or pass backbone.weights=null or backbone.weights=/path/to/file."
        ) from None


def _load_weights_file(model, path: Path, spec: BackboneSpec) -> None:
    """Load a weights file saved from the same headless architecture."""
    if not path.is_file():
        raise TlbenchError(f"backbone.weights={path}: no such file; pass an existing weights file, "
                           "imagenet or null.")
    try:
        with warnings.catch_warnings():
            # Keras only warns when it skips layers it finds no weights for; that is a failed load.
            warnings.filterwarnings("error", message=".*(Skipping|freshly-initialized).*")
            model.load_weights(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TlbenchError(f"backbone.weights={path}: cannot load into headless {spec.name} "
                           f"({first[:200]}).") from None


def set_bn_momentum(model, momentum: float) -> None:
    """Override BatchNorm momentum so moving statistics converge within a small-data run."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def unfreeze_top(model, spec: BackboneSpec, blocks: int | None, fraction: float | None) -> None:
    """Make the top stages (or top share of weighted layers) trainable; BatchNorm stays frozen."""
    import keras

    model.trainable = True
    layers = model.layers
    if blocks is not None:
        first_stage = len(spec.stages) - blocks + 1
        selected = {id(layer) for layer in layers
                    if (spec.stage_of(layer.name) or 0) >= first_stage}
    else:
        weighted = [layer for layer in layers if layer.weights]
        count = max(1, round(fraction * len(weighted)))
        selected = {id(layer) for layer in weighted[-count:]}
    for layer in layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in selected and not is_bn


def preprocessed(spec: BackboneSpec, dataset: Dataset) -> Dataset:
    """The dataset with every split passed once through the backbone's preprocess_input."""
    return dataclasses.replace(
        dataset,
        x_train=preprocess(spec, dataset.x_train),
        x_val=preprocess(spec, dataset.x_val),
        x_test=preprocess(spec, dataset.x_test),
    )
