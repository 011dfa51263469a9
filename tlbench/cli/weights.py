"""`python -m tlbench weights`: which ImageNet files Keras expects, where, and which are cached.

Offline machines need these files copied into $KERAS_HOME/models before backbone.weights=imagenet
works. Also lists the source checkpoints (backbone.weights=source:<name>) already in the cache.
Starts no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tlbench import paths
from tlbench.backbone import NETWORKS, keras_models_dir
from tlbench.pretrain import MANIFEST_FILE


def imagenet_rows(input_size: int) -> list[tuple[str, str, str]]:
    """(backbone, file name, status) for every registered backbone at this input size."""
    rows = []
    for spec in NETWORKS.values():
        path = keras_models_dir() / spec.imagenet_file(input_size)
        status = f"present, {path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"
        rows.append((spec.name, path.name, status))
    return rows


def source_rows(root: Path) -> list[tuple[str, str]]:
    """(checkpoint directory, summary) for every complete source checkpoint under root."""
    rows = []
    for manifest_path in sorted(root.glob(f"*/{MANIFEST_FILE}")):
        manifest = json.loads(manifest_path.read_text())
        rows.append((manifest_path.parent.name,
                     f"source val accuracy {manifest['source_val_accuracy']:.3f}, "
                     f"{manifest['epochs']} epochs"))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the ImageNet cache table and the source checkpoints."""
    parser = argparse.ArgumentParser(
        prog="python -m tlbench weights",
        description="List the ImageNet files Keras expects (and whether they are cached) and the "
                    "cached source checkpoints.")
    parser.add_argument("--input-size", type=int, default=224,
                        help="backbone.input_size (MobileNetV2's file depends on it; default 224)")
    parser.add_argument("--cache-dir", default=None,
                        help="pretrain.cache_dir to list (default $TLBENCH_CACHE, else "
                             "~/.cache/tlbench/pretrained)")
    args = parser.parse_args(argv)
    models = keras_models_dir()
    print(f"ImageNet weights (backbone.weights=imagenet) in {models}:")
    for name, file_name, status in imagenet_rows(args.input_size):
        print(f"  {name:<15} {status:<20} {models / file_name}")
    root = paths.cache_dir("pretrained", args.cache_dir)
    print(f"Source checkpoints (backbone.weights=source:<name>) in {root}:")
    for name, summary in source_rows(root) or [("(none yet)", "")]:
        print(f"  {name:<45} {summary}")


if __name__ == "__main__":
    main()
