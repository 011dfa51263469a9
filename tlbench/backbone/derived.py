"""Entries for networks read from a file (your .keras model, a KerasHub preset): the facts a
registered entry states by hand are measured on the built network instead.

Stages come from strides as for every backbone (tlbench/backbone/stages.py); whether the part
above each stage boundary is reachable through one tensor (the cached cut of partial_finetune) is
tried; the minimum input size is the model's fixed input side, else 32; preprocessing maps
[0, 255] with a preprocess_input mode or x * scale + offset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from tlbench import compat
from tlbench.backbone.spec import BackboneSpec
from tlbench.backbone.stages import stage_strides, stages_of, strides_of
from tlbench.errors import TlbenchError

MODES = {"tf": ((-1.0, 1.0), "tf: to [-1, 1]"),
         "caffe": ((-123.68, 151.061), "caffe: BGR, ImageNet mean subtracted"),
         "torch": ((-2.1179, 2.64), "torch: to [0, 1], ImageNet mean and std"),
         "none": ((0.0, 255.0), "none: [0, 255] as is")}
"""backbone.preprocess modes: keras.applications' preprocess_input modes, or none."""
FLEXIBLE_MIN_SIZE = 32


def imagenet_mode(mode: str, images):
    """keras.applications' preprocess_input in `mode` (tf, caffe, torch), on a float32 copy of
    the images (a NumPy array, or a backend tensor inside the model)."""
    from keras.applications import imagenet_utils

    return imagenet_utils.preprocess_input(as_float32(images), mode=mode)


def affine(scale: Sequence[float], offset: Sequence[float], images):
    """images * scale + offset (per channel where scale and offset are lists), in float32 (a
    NumPy array, or a backend tensor inside the model)."""
    return as_float32(images) * np.asarray(scale, "float32") + np.asarray(offset, "float32")


def as_float32(images):
    """A float32 copy of a NumPy array, or the backend tensor cast to float32."""
    if isinstance(images, np.ndarray):
        return images.astype("float32")
    import keras

    return keras.ops.cast(images, "float32")


def unchanged(images: np.ndarray) -> np.ndarray:
    """No preprocessing: the network takes [0, 255]."""
    return images


def preprocessing(mode: str, scale=None, offset=None) -> tuple[Callable, tuple, str]:
    """(preprocess, range of [0, 255] after it, description) for a mode, or for `scale` with
    scale and offset (scalars or per-channel lists)."""
    if mode == "scale":
        scale, offset = np.ravel(scale).tolist(), np.ravel(offset).tolist()
        ends = [end for s, o in zip(np.broadcast_to(scale, 3), np.broadcast_to(offset, 3),
                                    strict=True) for end in (o, 255 * s + o)]
        return (functools.partial(affine, scale, offset), (min(ends), max(ends)),
                f"scale: x * {_short(scale)} + {_short(offset)}")
    (low, high), described = MODES[mode]
    function = unchanged if mode == "none" else functools.partial(imagenet_mode, mode)
    return function, (low, high), described


def _short(values: list[float]) -> str:
    return f"{values[0]:.4g}" if len(values) == 1 else "[" + ", ".join(f"{v:.4g}" for v in values) \
        + "]"


def fixed_side(model, key: str) -> int | None:
    """The model's fixed square input side, None where height and width are free; refused with
    one line unless it takes one batch of RGB images."""
    shapes = [tuple(tensor.shape) for tensor in model.inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][-1] != 3:
        raise TlbenchError(f"{key}: the model takes inputs of shape {shapes}, not one batch of "
                           "RGB images (batch, height, width, 3); tlbench feeds square RGB "
                           "images.")
    height, width = shapes[0][1:3]
    if height != width:
        raise TlbenchError(f"{key}: the model's input is {height}x{width}; tlbench feeds square "
                           "images, so save it with a square or free (None, None, 3) input.")
    return height


def one_tensor_cuts(model, stages: dict[str, int], count: int) -> bool:
    """Whether the network above every stage boundary depends on the input only through the
    output of the layer before the stage (the activations partial_finetune caches at the cut)."""
    layers = model.layers
    for first_stage in range(2, count + 1):
        first = next(i for i, layer in enumerate(layers)
                     if stages.get(layer.name, 0) >= first_stage)
        if _bypassed(layers[first - 1].output, model.outputs):
            return False
    return True


def _bypassed(cut, outputs) -> bool:
    """Whether some path from the outputs back to the input avoids the `cut` tensor (walked
    through Keras' graph history; nothing is built)."""
    seen, stack = set(), list(outputs)
    while stack:
        tensor = stack.pop()
        if tensor is cut or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node_index, _ = tensor._keras_history
        inputs = operation._inbound_nodes[node_index].input_tensors
        if not inputs:  # the network's input, reached around the cut
            return True
        stack.extend(inputs)
    return False


def measured_spec(model, *, name: str, family: str, preprocess: tuple[Callable, tuple, str],
                  side: int | None, build: Callable, load_weights: Callable | None) -> BackboneSpec:
    """The entry for a built network: stages from its strides, the cut tried, sizes from its
    input."""
    function, (low, high), described = preprocess
    levels = stage_strides(strides_of(model, name))
    stages = stages_of(model, name)
    return BackboneSpec(
        name=name, build=build, preprocess=function, preprocessed_range=(low, high),
        default_input_size=side or 224, min_input_size=side or FLEXIBLE_MIN_SIZE, family=family,
        preprocessing=described, stages=levels,
        cut_at_one_tensor=one_tensor_cuts(model, stages, len(levels)),
        normalized=has_normalization(model), load_weights=load_weights)


def has_normalization(model) -> bool:
    """Whether any layer of the network (nested models included) normalises its activations."""
    import keras

    kinds = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
             keras.layers.GroupNormalization)
    return any(isinstance(layer, kinds) for layer in compat.walk_layers(model))
