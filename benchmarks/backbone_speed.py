"""Build time and forward throughput per backbone at its minimum input size, as one table.

    python benchmarks/backbone_speed.py --only mobilenetv3small densenet121 convnexttiny
    python benchmarks/backbone_speed.py --images 512 --batch 64      # every registered network

Build: `build_base` with random weights (the first build also pays TensorFlow's start-up, so a
warm-up build of the pixels floor comes first). Forward: the pooled base in inference mode on
random [0, 255] images after preprocess_input, one untimed call first (tracing), then `--images`
images in batches of `--batch`.
"""

from __future__ import annotations

import argparse
import sys
import time


def measure(name: str, images: int, batch: int) -> tuple[str, ...]:
    """(backbone, px, params, build s, forward img/s) for one backbone."""
    import keras
    import numpy as np

    from tlbench import registry
    from tlbench.backbone import build_base
    from tlbench.frozen import cache

    spec = registry.BACKBONES[name]
    size = max(32, spec.min_input_size)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    base = build_base(spec, size, None, None)
    built = time.perf_counter() - start
    model = cache.extractor(base, spec, cache.POOLED)
    x = spec.preprocess(np.random.default_rng(0).uniform(0, 255, (images, size, size, 3))
                        .astype("float32"))
    model.predict(x[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.predict(x, batch_size=batch, verbose=0)
    rate = images / (time.perf_counter() - start)
    return (name, str(size), f"{base.count_params() / 1e6:.1f}M", f"{built:.1f}", f"{rate:.0f}")


def main(argv: list[str] | None = None) -> int:
    """Print the table, one row per backbone as it finishes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these backbones only")
    parser.add_argument("--images", type=int, default=256, help="timed forward images")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    from tlbench import registry
    from tlbench.quiet import import_keras

    import_keras()
    measure("pixels", args.batch, args.batch)  # TensorFlow's start-up, not timed
    names = args.only or [n for n, spec in registry.BACKBONES.items() if spec.has_weights]
    print("| backbone | px | params | build s | forward img/s |\n|---|---|---|---|---|",
          flush=True)
    for name in names:
        print("| " + " | ".join(measure(name, args.images, args.batch)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
