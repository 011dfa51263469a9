"""Your own network as a backbone: `backbone=keras_file backbone.path=model.keras`.

The saved model is loaded once per file content; a classifier top, if present, is cut off after
its last layer with a feature map (the layer before global pooling or Flatten). Its entry is
measured on the network (tlbench/backbone/derived.py). backbone.weights: `file` (the weights
saved in the model), null (its architecture, randomly initialised), a weights file of the headless
part, or source:<name> (pretrained from random initialisation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from tlbench import registry
from tlbench.backbone.derived import MODES, fixed_side, measured_spec, preprocessing
from tlbench.backbone.spec import BackboneSpec
from tlbench.config import BackboneConfig
from tlbench.errors import TlbenchError, check, check_choice
from tlbench.paths import sha256_of

OWN_WEIGHTS = "file"


@registry.FILE_BACKBONES.entry("keras_file")
@dataclass(kw_only=True)
class KerasFileConfig(BackboneConfig):
    """A saved Keras image model; `preprocess` maps [0, 255] into what it was trained on (a
    preprocess_input mode, none, or `scale`: x * scale + offset)."""

    path: str | None
    preprocess: str
    scale: float
    offset: float

    def __post_init__(self) -> None:
        check(self.path is not None, "backbone.path", self.path,
              "the path of a saved Keras model (model.save('name.keras'))")
        check_choice("backbone.preprocess", self.preprocess, [*MODES, "scale"])
        check(self.weights != "imagenet", "backbone.weights", self.weights,
              f"{OWN_WEIGHTS} (the model's own weights), null (random initialisation), a weights "
              "file or source:<name>; keras_file has no ImageNet file")
        if self.weights == OWN_WEIGHTS:
            self.weights = self.path
        super().__post_init__()
        side = fixed_side(headless(*self.source()), f"backbone.path={self.path}")
        check(side is None or self.input_size == side, "backbone.input_size", self.input_size,
              f"{side}: the model's fixed input side")

    def source(self) -> tuple[str, str]:
        """The model file's resolved path and its sha256; one line when there is no such file."""
        path = Path(self.path).expanduser().resolve()
        if not path.is_file():
            raise TlbenchError(f"backbone.path={self.path}: no such file; pass a model saved "
                               "with model.save('name.keras').")
        return str(path), sha256_of(path)

    def entry(self) -> BackboneSpec:
        """The entry measured on this file's network (once per file content and preprocess)."""
        return file_entry(*self.source(), self.preprocess, self.scale, self.offset)

    def content_digest(self) -> str:
        """The sha256 of the .keras file."""
        return self.source()[1]


@functools.lru_cache(maxsize=8)
def file_entry(path: str, digest: str, mode: str, scale: float, offset: float) -> BackboneSpec:
    """The entry for the model saved at `path` (whose content has `digest`)."""
    model = headless(path, digest)
    return measured_spec(
        model, name=f"keras_file-{digest[:12]}", family="keras_file",
        preprocess=preprocessing(mode, scale, offset),
        side=fixed_side(model, f"backbone.path={path}"),
        build=functools.partial(random_init, path, digest),
        load_weights=functools.partial(load_own_weights, path, digest))


@functools.lru_cache(maxsize=2)
def loaded(path: str, digest: str):
    """The saved model, loaded once per content; one line when the file is not a Keras model."""
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TlbenchError(f"backbone.path={path}: not a saved Keras model ({first}); save one "
                           "with model.save('name.keras').") from None
    if not isinstance(model, keras.Model):
        raise TlbenchError(f"backbone.path={path}: holds a {type(model).__name__}, not a Keras "
                           "model.")
    return model


def headless(path: str, digest: str):
    """The saved model up to its last layer with a feature map (batch, height, width, channels):
    a classifier top (global pooling, Flatten, Dense) is cut off."""
    import keras

    model = loaded(path, digest)
    fixed_side(model, f"backbone.path={path}")
    maps = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
            and _feature_map(layer)]
    if not maps:
        raise TlbenchError(f"backbone.path={path}: no layer outputs a feature map (batch, "
                           "height, width, channels); a backbone needs convolutional layers.")
    top = maps[-1]
    if isinstance(top, keras.Model) and len(maps) == 1:  # e.g. Sequential([a keras.applications
        return top                                       # base, pooling, Dense]): the base itself
    if len(model.outputs) == 1 and top.output is model.outputs[0]:
        return model
    return keras.Model(model.inputs, top.output, name=model.name)


def _feature_map(layer) -> bool:
    """Whether the layer has one 4-D output with a spatial map."""
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer used several times has no single output
        return False
    return len(shape) == 4 and shape[-1] is not None


def random_init(path: str, digest: str, input_shape: tuple[int, int, int],
                weights: None = None):
    """The headless network on an input of `input_shape`, freshly initialised (Keras'
    clone_model)."""
    import keras

    model = headless(path, digest)
    inputs = keras.Input(shape=input_shape)
    return keras.models.clone_model(model, input_tensors=inputs if isinstance(
        model.input, keras.KerasTensor) else [inputs])


def load_own_weights(path: str, digest: str, model, weights_path) -> None:
    """The saved model's own weights where `weights_path` is the model file, else a weights file
    of the headless network."""
    if Path(weights_path).expanduser().resolve() == Path(path):
        model.set_weights(headless(path, digest).get_weights())
    else:
        model.load_weights(str(weights_path))
