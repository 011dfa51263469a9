"""What a backbone costs to run: multiply-adds at an input size, counted from the network."""

from __future__ import annotations

import math

from tlbench.backbone.graph import trace


def multiply_adds(model, input_size: int) -> int:
    """Multiply-adds of one forward pass at input_size x input_size: convolutions (grouped,
    depthwise and separable) and dense layers, nested models included; normalisation,
    activations, pooling and additions are left out (a few percent at most)."""
    total = 0

    def visit(op, inputs, outputs) -> None:
        nonlocal total
        total += count(op, inputs, outputs[0])

    trace(model, input_size, visit)
    return total


def count(op, inputs, output) -> int:
    """Multiply-adds of one operation from its input and output shapes (0 for uncounted ones)."""
    import keras

    layers = keras.layers
    out = math.prod(output.shape[1:])
    channels = inputs[0].shape[-1] if inputs else 0
    if isinstance(op, layers.SeparableConv2D):
        depthwise = math.prod(output.shape[1:-1]) * channels * op.depth_multiplier
        return depthwise * math.prod(op.kernel_size) + out * channels * op.depth_multiplier
    if isinstance(op, layers.DepthwiseConv2D):
        return out * math.prod(op.kernel_size)
    if isinstance(op, layers.Conv2D | layers.Conv1D | layers.Conv3D):
        return out * math.prod(op.kernel_size) * channels // getattr(op, "groups", 1)
    if isinstance(op, layers.Dense):
        return out * channels
    return 0
