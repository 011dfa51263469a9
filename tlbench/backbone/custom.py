"""Your own network as a backbone: `backbone=keras_file backbone.path=model.keras`.

The saved model is loaded once per file content; a classifier top, if present, is cut off after
its last layer with a feature map (the layer before global pooling or Flatten). Its entry is
measured on the network (tlbench/backbone/derived.py). backbone.weights: `file` (the weights
saved in the model), null (its architecture, randomly initialised), a weights file of the headless
part, or source:<name> (pretrained from random initialisation). A model with custom layers loads
once backbone.imports names the Python modules that define them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tlbench import registry
from tlbench.backbone.derived import MODES, fixed_side, measured_spec, preprocessing
from tlbench.backbone.spec import BackboneSpec
from tlbench.config import BackboneConfig
from tlbench.errors import TlbenchError, check, check_choice, one_line
from tlbench.paths import sha256_of

OWN_WEIGHTS = "file"
MISSING_CLASS = re.compile(r"Could not locate (?:class|function) '([^']+)'")
"""Keras' TypeError (nested in its message when inside a model) for a class it cannot find."""
SAVED_MODULE = re.compile(r"Full object config: \{'module': '([^']+)'")
"""The module that class was saved from, in the config Keras quotes after it."""


@registry.FILE_BACKBONES.entry("keras_file")
@dataclass(kw_only=True)
class KerasFileConfig(BackboneConfig):
    """A saved Keras image model; `imports`: modules defining its custom layers; `preprocess`
    maps [0, 255] into what it was trained on (a preprocess_input mode, none, or `scale`)."""

    path: str | None
    imports: list[str]
    preprocess: str
    scale: float
    offset: float

    def __post_init__(self) -> None:
        check(self.path is not None, "backbone.path", self.path,
              "the path of a saved Keras model (model.save('name.keras'))")
        import_modules(self.imports)
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


def import_modules(names: list[str]) -> None:
    """Import each module (from the current directory or PYTHONPATH), so that its registered
    Keras classes are known, and make its unregistered ones known by their class name."""
    from tlbench.quiet import import_keras

    if not names:
        return
    import_keras()
    import keras

    if os.getcwd() not in sys.path and "" not in sys.path:  # a console script, not python -m
        sys.path.append(os.getcwd())
    for name in names:
        check(not name.endswith(".py") and all(part.isidentifier() for part in name.split(".")),
              "backbone.imports", name, "a Python module name such as my_layers (for "
              "my_layers.py, not its path), importable from the current directory or PYTHONPATH")
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise import_error(name, exc) from None
        keras.saving.get_custom_objects().update(unregistered_classes(module))


def import_error(name: str, exc: Exception) -> TlbenchError:
    """One line for a module in backbone.imports that cannot be imported."""
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing and (name == missing or name.startswith(f"{missing}.")):
        return TlbenchError(f"backbone.imports: no module {name!r} in the current directory "
                            f"({os.getcwd()}) or on PYTHONPATH; run from the folder that holds "
                            f"{name.replace('.', '/')}.py or add it to PYTHONPATH.")
    return TlbenchError(f"backbone.imports: importing {name!r} failed ({type(exc).__name__}: "
                        f"{one_line(exc)[:200]}); python -c 'import {name}' shows the traceback.")


def unregistered_classes(module) -> dict[str, type]:
    """The Keras-serialisable classes (with get_config) the module defines without
    register_keras_serializable, by name: how Keras saved them."""
    import keras

    return {cls.__name__: cls for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__ and hasattr(cls, "get_config")
            and keras.saving.get_registered_name(cls) == cls.__name__}


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

    if path.endswith(".keras") and not zipfile.is_zipfile(path):  # Keras: "File not found"
        raise TlbenchError(f"backbone.path={path}: not a saved Keras model (a .keras file is a "
                           "zip archive; this one is not); save one with model.save('name.keras').")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise load_error(path, exc) from None
    if not isinstance(model, keras.Model):
        raise TlbenchError(f"backbone.path={path}: holds a {type(model).__name__}, not a Keras "
                           "model.")
    return model


def load_error(path: str, exc: Exception) -> TlbenchError:
    """One line for a file Keras cannot load: a class it cannot find (named, with the module it
    was saved from), else not a Keras model."""
    text = str(exc)
    missing = MISSING_CLASS.search(text) if isinstance(exc, TypeError) else None
    if missing:
        saved = SAVED_MODULE.search(text, missing.end())
        module = saved[1] if saved and saved[1] != "__main__" else "your_module"
        return TlbenchError(f"backbone.path={path}: Keras cannot find the class {missing[1]!r} "
                            f"that the model uses; pass backbone.imports=[{module}] (the Python "
                            "module that defines it, importable from the current directory or "
                            "PYTHONPATH).")
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return TlbenchError(f"backbone.path={path}: not a saved Keras model ({first}); save one with "
                        "model.save('name.keras').")


def headless(path: str, digest: str):
    """The saved model up to its last layer with a feature map (batch, height, width, channels):
    a classifier top (global pooling, Flatten, Dense) is cut off. Checking the config comes
    here first: Keras is imported quietly."""
    from tlbench.quiet import import_keras

    import_keras()
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
