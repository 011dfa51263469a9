"""Forward and training throughput per backbone x precision x Keras backend, and the wall time of a
small feature-extraction + partial fine-tune grid per backend and precision, as one table.

    python benchmarks/accelerator.py                       # every installed backend, CPU-sized
    python benchmarks/accelerator.py --size 224 --batch 128 --steps 20 --grid-size 224   # a GPU

Each backend runs in its own process (Keras fixes the backend when it is imported). Throughput:
random weights, random float32 images copied from the host each batch, the first call (tracing,
compilation) not timed; forward is the pooled base in inference mode, training a whole network
plus a softmax head (Adam). `--inputs float32,uint8` adds rows fed uint8 images (a quarter of the
bytes to copy to the device) that the model casts and scales itself (a Rescaling layer, as
cheap as any backbone's preprocess_input): does preprocessing on the device pay for itself?
The grid is the real CLI (`python -m tlbench -m ...`, random weights,
an empty feature cache and store), so its wall time includes start-up, data and the forward pass
for the cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

GRID = ["strategy=feature_extraction,partial_finetune", "data.train_size=20", "trainer.epochs=3",
        "trainer.patience=null", "backbone.weights=null"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="mobilenetv2,resnet50,efficientnetb0")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--backends", default=",".join(installed_backends()))
    parser.add_argument("--size", type=int, default=96, help="throughput input side (px)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed batches per measurement")
    parser.add_argument("--grid-size", type=int, default=32, help="the grid's data.input_size")
    parser.add_argument("--no-grid", action="store_true", help="throughput only")
    parser.add_argument("--inputs", default="float32",
                        help="float32 (preprocessed on the host) and/or uint8 (on the device)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def installed_backends() -> list[str]:
    """tensorflow, jax and torch, those importable here."""
    return [name for name in ("tensorflow", "jax", "torch") if importlib.util.find_spec(name)]


def throughput(backbone: str, precision: str, size: int, batch: int, steps: int,
               inputs: str = "float32") -> dict:
    """Images per second forward (pooled base, inference) and training (base + head, Adam);
    `inputs` uint8: the images cross as uint8 and the model casts and scales them."""
    import keras
    import numpy as np

    from tlbench import registry
    from tlbench.backbone import build_base

    keras.backend.clear_session()
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    base = build_base(registry.BACKBONES[backbone], size, None, 0.9)
    images = keras.Input((size, size, 3), dtype=inputs)
    scaled = images if inputs == "float32" else keras.layers.Rescaling(1 / 127.5, -1)(images)
    pooled = keras.layers.GlobalAveragePooling2D()(base(scaled))
    forward = keras.Model(images, pooled)
    head = keras.layers.Dense(10, activation="softmax", dtype="float32")(pooled)
    model = keras.Model(images, head)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * steps, size, size, 3)).astype(inputs)
    y = rng.integers(0, 10, batch * steps)
    forward.predict(x[:batch], batch_size=batch, verbose=0)  # trace and compile
    start = time.perf_counter()
    forward.predict(x, batch_size=batch, verbose=0)
    forward_rate = len(x) / (time.perf_counter() - start)
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    train_rate = len(x) / (time.perf_counter() - start)
    return {"forward": forward_rate, "train": train_rate}


def grid_seconds(backend: str, precision: str, backbone: str, size: int) -> float:
    """Wall time of the GRID multirun through the real CLI, into a fresh store and cache."""
    with tempfile.TemporaryDirectory() as folder:
        env = os.environ | {"KERAS_BACKEND": backend, "TLBENCH_CACHE": folder}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlbench", "-m", *GRID, f"backbone={backbone}",
                        f"data.input_size={size}", f"trainer.precision={precision}",
                        f"tracking.uri=sqlite:///{folder}/mlflow.db",
                        f"hydra.sweep.dir={folder}/h"],
                       env=env, cwd=folder, check=True, capture_output=True)
        return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    """On this process's backend: one JSON line per backbone x precision."""
    from tlbench import runtime

    device = runtime.accelerator()
    for backbone in args.backbones.split(","):
        for precision in args.precisions.split(","):
            for inputs in args.inputs.split(","):
                rates = throughput(backbone, precision, args.size, args.batch, args.steps,
                                   inputs)
                print(json.dumps({"backend": runtime.backend(), "device": device.name,
                                  "backbone": backbone, "precision": precision,
                                  "inputs": inputs} | rates), flush=True)


def measure(backend: str, args: argparse.Namespace) -> list[dict]:
    """The child's rows on one backend, plus the grid's wall time per precision."""
    env = os.environ | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                         check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    first, inputs = args.backbones.split(",")[0], args.inputs.split(",")[0]
    grid = {} if args.no_grid else {p: grid_seconds(backend, p, first, args.grid_size)
                                    for p in args.precisions.split(",")}
    for row in rows:
        mine = row["backbone"] == first and row["inputs"] == inputs
        row["grid"] = grid.get(row["precision"]) if mine else None
    return rows


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args)
    rows = [row for backend in args.backends.split(",") for row in measure(backend, args)]
    print(f"\n{args.size} px, batch {args.batch}, {args.steps} timed batches; grid: "
          f"{' '.join(GRID)} data.input_size={args.grid_size}, backbone "
          f"{args.backbones.split(',')[0]}\n")
    print("| backend | device | backbone | precision | inputs | forward img/s | train img/s | "
          "grid s |")
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        grid = "" if r["grid"] is None else f"{r['grid']:.1f}"
        print(f"| {r['backend']} | {r['device']} | {r['backbone']} | {r['precision']} | "
              f"{r['inputs']} | {r['forward']:.0f} | {r['train']:.0f} | {grid} |")


if __name__ == "__main__":
    main()
