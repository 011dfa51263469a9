"""`python -m tlbench backbones`: one table of every registered backbone.

Family, parameters, minimum and default input size, preprocessing, the first layer of each stage
(derived from the network: tlbench/backbone/stages.py), the ImageNet file Keras looks for and
whether it is in the Keras cache. Each network is built once, with random weights, at its minimum
input size (NASNet again at its default size, for the multiply-adds there); a few minutes for all
of them on 2 cores; --only picks some.
"""

from __future__ import annotations

import argparse
import time

from tlbench.backbone import BACKBONES, BackboneSpec, build_base, imagenet_path, stages_of
from tlbench.backbone.cost import multiply_adds
from tlbench.errors import TlbenchError

HEADER = ("backbone", "family", "params", "GMACs at default px", "min px", "default px",
          "preprocessing",
          "first layer of each stage (output stride)", "ImageNet file", "cached", "build s")


def first_layers(model, spec: BackboneSpec) -> str:
    """'stride: first layer' for each stage, bottom to top."""
    stages = stages_of(model, spec.name)
    firsts: dict[int, str] = {}
    for layer in model.layers:
        stage = stages.get(layer.name)
        if stage is not None and layer.weights:
            firsts.setdefault(stage, layer.name)
    return ", ".join(f"{spec.stages[stage - 1]}: {name}" for stage, name in sorted(firsts.items()))


def row(spec: BackboneSpec) -> tuple[str, ...]:
    """One backbone's row; builds it at its minimum size with random weights."""
    start = time.perf_counter()
    model = build_base(spec, spec.min_input_size, None, None)
    seconds = time.perf_counter() - start
    cached = ""
    if spec.has_weights:
        cached = "yes" if imagenet_path(spec, spec.default_input_size).is_file() else "no"
    return (spec.name, spec.family, f"{model.count_params() / 1e6:.1f}M",
            f"{default_multiply_adds(spec, model) / 1e9:.2f}",
            str(spec.min_input_size), str(spec.default_input_size), spec.preprocessing,
            first_layers(model, spec) if spec.stages else "(no stages)",
            spec.imagenet_file(spec.default_input_size) if spec.has_weights else "",
            cached, f"{seconds:.1f}")


def default_multiply_adds(spec: BackboneSpec, model) -> int:
    """Multiply-adds at the default input size, traced on the model built at its minimum size,
    or on one built at the default size where the graph depends on the size it was built at
    (NASNet chooses its cropping layers from it)."""
    try:
        return multiply_adds(model, spec.default_input_size)
    except ValueError:
        built = build_base(spec, spec.default_input_size, None, None)
        return multiply_adds(built, spec.default_input_size)


def markdown(rows: list[tuple[str, ...]]) -> str:
    """A markdown table with the header."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def main(argv: list[str] | None = None) -> int:
    """Print the backbone table (markdown)."""
    parser = argparse.ArgumentParser(prog="python -m tlbench backbones",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="these backbones only (default: every registered one)")
    args = parser.parse_args(argv)
    names = args.only or list(BACKBONES)
    try:
        specs = [BACKBONES[name] for name in names]
    except TlbenchError as exc:  # an unknown name: one line with the closest ones
        raise SystemExit(f"tlbench: error: {exc}") from None
    from tlbench.quiet import import_keras

    import_keras()
    print(markdown([row(spec) for spec in specs]), flush=True)
    return 0
