"""Building a backbone's base with its weights (random, ImageNet through Keras' cache, or a file),
recording its stages, and unfreezing its top stages. Keras is imported lazily."""

from __future__ import annotations

import warnings
from pathlib import Path

from tlbench.backbone.spec import BackboneSpec
from tlbench.errors import TlbenchError
from tlbench.paths import download_timeout, keras_home, sha256_of


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




def _build_imagenet(spec: BackboneSpec, shape):
    """Let Keras load ImageNet weights from its cache or download them; one line when it cannot."""
    path = imagenet_path(spec, shape[0])
    cached = path.is_file()
    try:
        with download_timeout():
            return spec.build(shape, weights="imagenet")
    except Exception as exc:
        if "URL fetch failure" not in str(exc) and not isinstance(exc, TimeoutError):
            raise
        problem = ("was in the Keras cache but failed Keras' checksum (Keras deleted it)" if cached
                   else "is not in the Keras cache")
        raise TlbenchError(
            f"backbone.weights=imagenet: {spec.imagenet_file(shape[0])} {problem} and cannot be "
            f"downloaded; copy it to {path} ($KERAS_HOME/models, default ~/.keras/models; "
            "python -m tlbench weights lists them all), or use backbone.weights=null, "
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
            if spec.load_weights is not None:
                spec.load_weights(model, path)
            else:
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
        first_stage, stages = len(spec.stages) - blocks + 1, spec.stages_in(model)
        selected = {id(layer) for layer in layers if stages.get(layer.name, 0) >= first_stage}
    else:
        weighted = [layer for layer in layers if layer.weights]
        count = max(1, round(fraction * len(weighted)))
        selected = {id(layer) for layer in weighted[-count:]}
    for layer in layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in selected and not is_bn


def on_pixels(spec: BackboneSpec, model):
    """`model` (taking the backbone's preprocessed images) fed uint8 RGB pixels: the cast and
    the backbone's preprocessing are its first layer."""
    from tlbench.backbone.preprocessing import on_pixels as wrapped

    return wrapped(model, spec.preprocess)
