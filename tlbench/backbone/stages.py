"""Stages found from the network: a layer's stage is the output stride of its block.

Every operation of the network (layers and plain ops in `model.operations`, nested models
followed inside) is traced symbolically at a large probe input, so an output of side h has stride
2^round(log2(probe / h)) whatever the padding. Outputs without a spatial map (squeeze-and-excite
branches, pooled vectors) take the stride of their inputs. Layers are then grouped into named
blocks, a consecutive run sharing the name up to its first token with a digit (`block5_conv1` ->
`block5`, `block_13_expand` -> `block_13`, `conv4_block2_out` -> `conv4`; auto-generated names
such as `conv2d_7` are blocks of their own), and a block sits at the largest stride it reaches:
a block that downsamples belongs to the stage it ends in. Strides 2, 4, 8, 16, 32 are stages 1..5
where all are present; in general the stages are the distinct strides, bottom to top, and
stride-1 layers (the input, rescaling) belong to the first.
"""

from __future__ import annotations

import math
import re

from tlbench.backbone.graph import trace

PROBE = 512
_STRIDES: dict[str, list[int]] = {}


def _spatial_stride(shape, probe: int) -> int | None:
    """The stride of a channels-last feature map of this shape, None for anything else."""
    if len(shape) != 4 or shape[1] is None or shape[1] <= 1:
        return None
    return max(1, 2 ** round(math.log2(probe / shape[1])))


def traced_strides(model, probe: int = PROBE) -> dict[int, int]:
    """Output stride of every operation of `model` (by id), traced at a probe x probe input."""
    tensor_strides: dict[int, int] = {}
    strides: dict[int, int] = {}

    def visit(op, inputs, outputs) -> None:
        inherited = max((tensor_strides.get(id(t), 1) for t in inputs), default=1)
        stride = max([inherited] + [s for t in outputs
                                    if (s := _spatial_stride(t.shape, probe)) is not None])
        strides[id(op)] = stride
        for tensor in outputs:
            tensor_strides[id(tensor)] = stride

    trace(model, probe, visit)
    return strides


def block_key(name: str, auto: bool) -> str:
    """The block a layer name belongs to: up to its first token with a digit (or itself)."""
    if auto:
        return name
    tokens = name.split("_")
    for index, token in enumerate(tokens):
        if re.search(r"\d", token):
            return "_".join(tokens[:index + 1])
    return name


def _is_auto_named(op) -> bool:
    """Whether Keras made up the name from the class (conv2d_7, add, batch_normalization_3)."""
    return re.fullmatch(re.escape(snake_case(type(op).__name__)) + r"(_\d+)?", op.name) \
        is not None


def snake_case(name: str) -> str:
    """A class name as Keras names its instances (Conv2D -> conv2d, ReLU -> re_lu)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def block_strides(model) -> list[int]:
    """Per operation of `model` (in order), the largest stride its block reaches."""
    traced = traced_strides(model)
    operations = model.operations
    keys = [block_key(op.name, _is_auto_named(op)) for op in operations]
    result = [traced.get(id(op), 1) for op in operations]
    start = 0
    for index in range(1, len(operations) + 1):
        if index == len(operations) or keys[index] != keys[start]:
            top = max(result[start:index])
            result[start:index] = [top] * (index - start)
            start = index
    return result


def strides_of(model, cache_key: str | None = None) -> dict[str, int]:
    """{operation name: block stride}; computed once per cache_key (e.g. the backbone name)."""
    operations = model.operations
    strides = _STRIDES.get(cache_key) if cache_key else None
    if strides is None or len(strides) != len(operations):
        strides = block_strides(model)
        if cache_key:
            _STRIDES[cache_key] = strides
    return {op.name: stride for op, stride in zip(operations, strides, strict=True)}


def stage_strides(strides: dict[str, int]) -> tuple[int, ...]:
    """The distinct strides above 1, bottom to top: the network's stages."""
    return tuple(sorted({s for s in strides.values() if s > 1})) or (1,)


def stages_of(model, cache_key: str | None = None) -> dict[str, int]:
    """{operation name: 1-based stage}; stride-1 operations belong to the first stage."""
    strides = strides_of(model, cache_key)
    levels = stage_strides(strides)
    return {name: max(1, levels.index(s) + 1 if s in levels else 1)
            for name, s in strides.items()}
