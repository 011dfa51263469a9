"""One symbolic walk through a network's graph, shared by stages (strides) and cost
(multiply-adds): every operation is computed on shapes only, nested models followed inside."""

from __future__ import annotations

from collections.abc import Callable

from tlbench import compat

Visit = Callable[[object, list, list], None]
"""visit(operation, its input tensors, its output tensors), called in graph order."""


def trace(model, side: int, visit: Visit) -> None:
    """Run `model` on a symbolic 1 x side x side x 3 input, calling `visit` for every
    operation; a nested model is visited after its own operations."""
    import keras

    compat.run_through_graph(model, keras.KerasTensor((1, side, side, 3)), _visiting(visit))


def _visiting(visit: Visit) -> Callable:
    """The operation_fn that computes each operation's output spec and reports it to `visit`."""
    import keras
    from keras import tree

    def wrap(op):
        def call(*args, **kwargs):
            inputs = [t for t in tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
            if isinstance(op, keras.Model):
                output = compat.run_through_graph(op, args[0], wrap)
            else:
                output = op.compute_output_spec(*args, **kwargs)
            visit(op, inputs, tree.flatten(output))
            return output

        return call

    return wrap
