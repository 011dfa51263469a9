"""Backbone registry: each entry binds its constructor, preprocessing, input range and stages.

Stages are the network's resolution levels (output stride 2, 4, 8, 16, 32), so "unfreeze the top
1 stage" means the same thing on every backbone. Keras is imported lazily: the registry itself is
static facts, cheap enough to validate configs before TensorFlow starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlbench import registry
from tlbench.errors import TlbenchError
from tlbench.paths import keras_home, sha256_of

if TYPE_CHECKING:
    from tlbench.data import Dataset


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build, feed and partially unfreeze it, and what it can do.

    `build(input_shape, weights)` makes the headless network (weights None: random; "imagenet":
    through Keras' cache); `preprocess(images)` maps
    RGB in [0, 255] to what it was trained on. Capabilities: `has_weights` (pretrained weights can
    be loaded and its BatchNorm tuned), `trainable` (it has layers a strategy can train),
    `features` ("pooled": global average of the last feature map; "flat": the output flattened).
    """

    name: str
    build: Callable[..., Any]
    preprocess: Callable[[np.ndarray], np.ndarray]
    preprocessed_range: tuple[float, float]
    default_input_size: int
    min_input_size: int
    stages: tuple[str, ...]
    imagenet_template: str = ""
    imagenet_sizes: tuple[int, ...] = ()
    features: str = "pooled"
    has_weights: bool = True
    trainable: bool = True

    def imagenet_file(self, input_size: int) -> str:
        """The headless ImageNet file Keras caches in $KERAS_HOME/models for this input size."""
        rows = input_size if input_size in self.imagenet_sizes else 224
        return self.imagenet_template.format(rows=rows)

    def stage_of(self, layer_name: str) -> int | None:
        """The 1-based stage a layer belongs to, or None for layers outside every stage."""
        for index, pattern in enumerate(self.stages, start=1):
            if re.match(pattern, layer_name):
                return index
        return None


def application(constructor: str) -> Callable[..., Any]:
    """A builder for a headless keras.applications network (random or ImageNet weights)."""
    def build(input_shape: tuple[int, int, int], weights: str | None = None):
        import keras

        return getattr(keras.applications, constructor)(include_top=False, weights=weights,
                                                        input_shape=input_shape)

    return build


def preprocess_input(module: str) -> Callable[[np.ndarray], np.ndarray]:
    """keras.applications.<module>.preprocess_input, applied to a copy of the images."""
    def preprocess(images: np.ndarray) -> np.ndarray:
        import keras

        return getattr(keras.applications, module).preprocess_input(images.copy())

    return preprocess


def unchanged(images: np.ndarray) -> np.ndarray:
    """No preprocessing: the network takes [0, 255] RGB itself."""
    return images


def pixels_model(input_shape: tuple[int, int, int], weights: None = None):
    """The identity "backbone": pixels rescaled from [0, 255] to [0, 1], no weights."""
    import keras

    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs), name="pixels")


for _spec in (
    BackboneSpec(
        name="resnet50",
        build=application("ResNet50"),
        preprocess=preprocess_input("resnet50"),
        preprocessed_range=(-123.68, 151.061),
        default_input_size=224,
        min_input_size=32,
        stages=(r"conv1_|pool1_", r"conv2_", r"conv3_", r"conv4_", r"conv5_"),
        imagenet_template="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    BackboneSpec(
        name="mobilenetv2",
        build=application("MobileNetV2"),
        preprocess=preprocess_input("mobilenet_v2"),
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
        # Keras picks the file by rows; other sizes load the 224 weights (with a warning).
        imagenet_template="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
        imagenet_sizes=(96, 128, 160, 192, 224),
    ),
    BackboneSpec(
        name="efficientnetb0",
        build=application("EfficientNetB0"),
        preprocess=preprocess_input("efficientnet"),
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
        imagenet_template="efficientnetb0_notop.h5",
    ),
    BackboneSpec(
        name="vgg16",
        build=application("VGG16"),
        preprocess=preprocess_input("vgg16"),
        preprocessed_range=(-123.68, 151.061),
        default_input_size=224,
        min_input_size=32,
        stages=(r"block1_", r"block2_", r"block3_", r"block4_", r"block5_"),
        imagenet_template="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    # The no-transfer floor: its features are the resized pixels scaled to [0, 1].
    BackboneSpec(
        name="pixels",
        build=pixels_model,
        preprocess=unchanged,
        preprocessed_range=(0.0, 1.0),
        default_input_size=32,
        min_input_size=8,
        stages=(),
        features="flat",
        has_weights=False,
        trainable=False,
    ),
):
    registry.BACKBONES.register(_spec.name, _spec)

BACKBONES = registry.BACKBONES
NETWORKS = {name: spec for name, spec in BACKBONES.items() if spec.has_weights}
"""The backbones with pretrained weights, stages and ImageNet files."""


def preprocess(spec: BackboneSpec, images):
    """Map RGB images in [0, 255] to the range the backbone was trained on (preprocess_input)."""
    return spec.preprocess(images)


def weights_kind(weights: str | None) -> str:
    """Classify a backbone.weights value for logging: imagenet, source, file or none."""
    if weights is None:
        return "none"
    if weights == "imagenet":
        return "imagenet"
    return "source" if weights.startswith("source:") else "file"


def keras_models_dir() -> Path:
    """Where Keras' get_file caches application weights: $KERAS_HOME/models."""
    return keras_home() / "models"


def imagenet_path(spec: BackboneSpec, input_size: int) -> Path:
    """The full path of the cached ImageNet file Keras looks for."""
    return keras_models_dir() / spec.imagenet_file(input_size)


def weights_sha256(spec: BackboneSpec, input_size: int, weights: str | None) -> str | None:
    """Checksum of the file the base was loaded from: the Keras cache file or the given path."""
    if weights is None:
        return None
    return sha256_of(imagenet_path(spec, input_size) if weights == "imagenet" else Path(weights))


def build_base(spec: BackboneSpec, input_size: int, weights: str | None, bn_momentum: float | None):
    """Build the headless network with its weights; BatchNorm momentum overridden if asked."""
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        model = _build_imagenet(spec, shape)
    else:
        model = spec.build(shape)
        if weights is not None:
            _load_weights_file(model, Path(weights), spec)
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model


DOWNLOAD_TIMEOUT_SECONDS = 30


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Bound every blocking socket operation (Keras downloads with urlretrieve, no timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _build_imagenet(spec: BackboneSpec, shape):
    """Let Keras load ImageNet weights from its cache or download them; one line when it cannot."""
    path = imagenet_path(spec, shape[0])
    cached = path.is_file()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_SECONDS):
            return spec.build(shape, weights="imagenet")
    except Exception as exc:
        if "URL fetch failure" not in str(exc) and not isinstance(exc, TimeoutError):
            raise
        problem = ("was in the Keras cache but failed Keras' checksum (Keras deleted it)" if cached
                   else "is not in the Keras cache")
        raise TlbenchError(
            f"backbone.weights=imagenet: {spec.imagenet_file(shape[0])} {problem} and cannot be "
            f"downloaded; copy it to {path} ($KERAS_HOME/models, default ~/.keras/models; "
            "python -m tlbench.weights lists them all), or use backbone.weights=null, "
            "a weights file path, or source:digits04 (source pretraining)."
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
