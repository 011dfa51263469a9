"""What a backbone costs to run: multiply-adds at an input size, counted from the network."""

from __future__ import annotations

import math


def multiply_adds(model, input_size: int) -> int:
    """Multiply-adds of one forward pass at input_size x input_size: convolutions (grouped,
    depthwise and separable) and dense layers, nested models included; normalisation,
    activations, pooling and additions are left out (a few percent at most)."""
    import keras
    from keras import tree

    total = 0

    def count(op, inputs, output) -> int:
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

    def trace(op):
        def call(*args, **kwargs):
            nonlocal total
            if isinstance(op, keras.Model):
                graph = getattr(op, "_functional", None) or op
                return graph._run_through_graph(args[0], operation_fn=trace)
            output = op.compute_output_spec(*args, **kwargs)
            inputs = [t for t in tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
            total += count(op, inputs, tree.flatten(output)[0])
            return output

        return call

    model._run_through_graph(keras.KerasTensor((1, input_size, input_size, 3)),
                             operation_fn=trace)
    return total
