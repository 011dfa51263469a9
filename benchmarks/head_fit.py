"""What a feature-extraction head's `fit` costs with and without its dropout: 10 epochs, as a
cached run fits it.

    python benchmarks/head_fit.py [--repeats 7] [--rows 626] [--val-rows 90] [--width 1280]
                                  [--classes 5] [--xla]

The heads are tlbench's own (`head_layers`: standardisation, dropout 0.2 as shipped or 0, softmax)
on random features of a cached run's shape (defaults: digits59's 626 training and 90 validation
rows of mobilenetv2's 1,280 pooled features, 5 classes), compiled as `train.fit` compiles a head
on features (Adam, `HEAD_STEPS_PER_CALL` steps per call, deterministic ops as by default). Each is
fitted once untimed (tracing), then `--repeats` times on fresh batches (`batches.batches`, no
prefetch), alternating between the heads; printed: the median seconds of a 10-epoch fit, the
validation pass included. `--xla` adds the shipped head compiled with XLA
(`trainer.jit_compile=true`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def compiled_head(dropout: float, width: int, classes: int, xla: bool = False):
    """tlbench's dense head on `width` features, compiled as for a run on cached features."""
    import keras

    from tlbench.config import DenseHeadConfig
    from tlbench.strategy.base import head_layers
    from tlbench.training.train import HEAD_STEPS_PER_CALL

    head = head_layers(classes, DenseHeadConfig(units=0, dropout=dropout, standardize=True))
    model = keras.Sequential([keras.Input((width,)), head])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=HEAD_STEPS_PER_CALL, jit_compile=xla)
    return model


def main() -> None:
    """Fit both heads alternately and print the median seconds of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=626, help="training rows")
    parser.add_argument("--val-rows", type=int, default=90, help="validation rows")
    parser.add_argument("--width", type=int, default=1280, help="features per row")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--xla", action="store_true", help="also the shipped head under XLA")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from tlbench import runtime
    from tlbench.training.batches import batches

    runtime.configure("float32", deterministic=True, seed=0, threads=None)
    rng = np.random.default_rng(0)
    val_rows = args.val_rows
    x, xv = (rng.normal(size=(n, args.width)).astype("float32") for n in (args.rows, val_rows))
    y, yv = (rng.integers(0, args.classes, n) for n in (args.rows, val_rows))
    heads = {f"dropout {rate}": compiled_head(rate, args.width, args.classes)
             for rate in (0.2, 0.0)}
    if args.xla:
        heads["dropout 0.2, XLA"] = compiled_head(0.2, args.width, args.classes, xla=True)

    def fit_seconds(model) -> float:
        train, val = batches(x, y, 32, 0, prefetch=False), batches(xv, yv, 32, prefetch=False)
        start = time.perf_counter()
        model.fit(train, validation_data=val, epochs=10, shuffle=False, verbose=0)
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {name: [] for name in heads}
    for model in heads.values():
        fit_seconds(model)  # traced once, as a sweep's first run of these shapes
    for _ in range(args.repeats):
        for name, model in heads.items():
            seconds[name].append(fit_seconds(model))
    for name, values in seconds.items():
        print(f"{name}: 10-epoch fit {statistics.median(values):.3f}s (median of "
              f"{args.repeats}; {args.rows} + {val_rows} rows x {args.width})")


if __name__ == "__main__":
    main()
