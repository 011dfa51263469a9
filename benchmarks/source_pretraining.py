"""Every backbone pretrained on a source (default digits04) at its minimum input size, or refused
with its one line: one markdown table.

    python benchmarks/source_pretraining.py                          # all (hours on 2 CPU cores)
    python benchmarks/source_pretraining.py --only vgg16 mobilenetv3small resnet50v2

Each backbone goes through the config check a run does (backbone.weights=source:<name>: refused
up front where the entry says the network cannot learn from random weights) and then through the
pretraining stage itself (tlbench.pretrain.source_checkpoint, with the shipped pretrain settings
unless --epochs is given), into a temporary checkpoint cache; a checkpoint below
pretrain.min_val_accuracy is refused by the same line a run gets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def attempt(name: str, source: str, epochs: int | None, cache: str) -> tuple[str, ...]:
    """(backbone, input px, outcome, source val accuracy, seconds) for one backbone."""
    from hydra import compose, initialize_config_module

    from tlbench import pretrain, registry
    from tlbench.config import parse_config
    from tlbench.errors import TlbenchError

    size = max(32, registry.BACKBONES[name].min_input_size)
    overrides = [f"backbone={name}", f"backbone.weights=source:{source}",
                 f"data.input_size={size}", f"pretrain.cache_dir={cache}",
                 *([f"pretrain.epochs={epochs}"] if epochs else [])]
    start = time.perf_counter()
    try:
        with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
            config = parse_config(compose(config_name="config", overrides=overrides))
        checkpoint = pretrain.source_checkpoint(config.backbone, config.pretrain, config.trainer)
    except TlbenchError as exc:
        accuracy = exc.metrics.get("source_val_accuracy")
        return (name, str(size), f"refused: {exc}", "" if accuracy is None else f"{accuracy:.3f}",
                f"{time.perf_counter() - start:.0f}")
    return (name, str(size), "pretrained",
            f"{checkpoint.manifest['source_val_accuracy']:.3f}",
            f"{time.perf_counter() - start:.0f}")


def main(argv: list[str] | None = None) -> int:
    """Print the table, one row as each backbone finishes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these backbones only")
    parser.add_argument("--source", default="digits04")
    parser.add_argument("--epochs", type=int, default=None, help="pretrain.epochs (default: the "
                        "shipped setting)")
    args = parser.parse_args(argv)
    from tlbench import registry
    from tlbench.quiet import import_keras

    import_keras()
    names = args.only or [n for n, spec in registry.BACKBONES.items() if spec.has_weights]
    print("| backbone | px | outcome | source val accuracy | seconds |\n|---|---|---|---|---|",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="tlbench-pretrain-") as cache:
        for name in names:
            print("| " + " | ".join(attempt(name, args.source, args.epochs, cache)) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
