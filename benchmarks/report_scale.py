"""Time `python -m tlbench.report` over a synthetic sweep of 10,000 runs in a sqlite store.

    python benchmarks/report_scale.py [--runs 10000] [--store PATH] [--rebuild]

The store is logged once through MlflowClient (about 25-35 ms per run: 4-6 minutes) and cached
at --store; later calls only time the report. The bar is 15 s wall-clock on an otherwise idle
2-core machine; the CPU time printed beside it is the figure to compare when the machine is busy.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKBONES = {"mobilenetv2": (0.70, 2.3e6, 1.0), "efficientnetb0": (0.74, 4.1e6, 1.6),
             "resnet50": (0.76, 23.6e6, 3.5), "vgg16": (0.72, 14.7e6, 4.0),
             "densenet121": (0.75, 7.0e6, 3.0)}
STRATEGIES = {"feature_extraction": (0.00, 0.001, 0.4), "partial_finetune": (0.04, 0.3, 0.7),
              "full_retrain": (0.05, 1.0, 1.0), "scratch": (-0.25, 1.0, 1.0)}
SIZES = ["5", "10", "20", "50", "100", "total:2000", "200", "total:5000", "500", "all"]
N_TRAIN = {"5": 50, "10": 100, "20": 200, "50": 500, "100": 1000, "total:2000": 2000,
           "200": 2000, "total:5000": 5000, "500": 5000, "all": 12000}
FAILURE_RATE = 0.02
SWEEP_ID = "multirun_scale-benchmark"
DECOY_SWEEP_ID = "multirun_older-sweep"
BAR_SECONDS = 15.0


def default_store(runs: int) -> Path:
    """A cache path outside the repository, one file per run count."""
    return Path(tempfile.gettempdir()) / "tlbench-report-scale" / f"runs-{runs}.db"


def grid(runs: int) -> list[tuple[str, str, str, int]]:
    """(backbone, strategy, size, seed) for `runs` runs: all configurations, seeds as needed."""
    configs = list(itertools.product(BACKBONES, STRATEGIES, SIZES))
    seeds = -(-runs // len(configs))
    cells = [(*config, seed) for seed in range(seeds) for config in configs]
    return cells[:runs]


def run_record(backbone: str, strategy: str, size: str, seed: int, sweep_id: str,
               rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Plausible params, metrics and tags for one run of the synthetic benchmark."""
    base, params_total, slowness = BACKBONES[backbone]
    gain, trainable_share, strategy_cost = STRATEGIES[strategy]
    n_train = N_TRAIN[size]
    accuracy = min(0.999, base + gain + 0.05 * np.log10(n_train) + rng.normal(0, 0.015))
    fit = slowness * strategy_cost * n_train / 40 * rng.uniform(0.9, 1.1)
    params = {"backbone.name": backbone, "backbone.weights": "imagenet",
              "backbone.input_size": "96", "backbone.bn_momentum": "0.9",
              "strategy.name": strategy, "strategy.head.units": "0", "strategy.head.dropout": "0.2",
              "data.name": "digits", "data.train_size": size, "data.val_fraction": "0.1",
              "data.test_fraction": "0.2", "data.split_seed": "0", "data.input_size": "96",
              "trainer.epochs": "10", "trainer.batch_size": "32", "trainer.lr": "0.001",
              "trainer.optimizer": "adam", "trainer.patience": "3", "seed": str(seed)}
    metrics = {"test_accuracy": accuracy, "val_accuracy": accuracy + rng.normal(0, 0.01),
               "test_macro_f1": accuracy - 0.01, "train_accuracy": min(1.0, accuracy + 0.1),
               "fit_seconds": fit, "first_epoch_seconds": fit / 8, "steady_epoch_seconds": fit / 11,
               "train_images_per_second": n_train * 10 / fit, "setup_seconds": 2.0 * slowness,
               "params_total": params_total, "params_trainable": params_total * trainable_share,
               "params_non_trainable": params_total * (1 - trainable_share), "epochs_run": 10,
               "n_train": n_train, "n_val": 1200, "n_test": 2400, "n_classes": 10}
    overrides = f"backbone={backbone} strategy={strategy} data.train_size={size} seed={seed}"
    config_hash = hashlib.sha256(overrides.encode()).hexdigest()[:16]
    tags = {"sweep_id": sweep_id, "config_hash": config_hash,
            "tlbench_version": "0.1.0", "git_commit": "0" * 40, "tensorflow_version": "2.20.0",
            "keras_version": "3.11.0", "mlflow_version": "3.17.2", "device": "cpu",
            "weights.kind": "none" if strategy == "scratch" else "imagenet",
            "command": f"python -m tlbench {overrides}"}
    return params, metrics, tags


def log_sweep(client, experiment_id: str, sweep_id: str, runs: int, seed: int) -> None:
    """Log `runs` synthetic runs of one sweep, about 2% of them FAILED with an error tag."""
    from mlflow.entities import Metric, Param, RunTag

    rng = np.random.default_rng(seed)
    for i, (backbone, strategy, size, run_seed) in enumerate(grid(runs)):
        params, metrics, tags = run_record(backbone, strategy, size, run_seed, sweep_id, rng)
        failed = rng.random() < FAILURE_RATE
        if failed:
            tags["error"] = "ResourceExhaustedError: OOM when allocating tensor"
            metrics = {}
        name = f"{backbone}-{strategy}-n{size}-s{run_seed}"
        run = client.create_run(experiment_id, run_name=name, tags={"sweep_id": sweep_id})
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id,
                         metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
        if (i + 1) % 1000 == 0:
            print(f"  logged {i + 1}/{runs} runs of {sweep_id}", flush=True)


def build_store(path: Path, runs: int) -> float:
    """Create the sqlite store (an older 200-run sweep, then the measured one); returns seconds."""
    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{partial}")
    experiment_id = client.create_experiment("tlbench")
    log_sweep(client, experiment_id, DECOY_SWEEP_ID, 200, seed=1)
    log_sweep(client, experiment_id, SWEEP_ID, runs, seed=0)
    partial.rename(path)
    return time.perf_counter() - started


def time_report(store: Path, out: Path) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of the report CLI on the store, as a user would run it; CPU
    time is the figure to trust when other work shares the machine."""
    command = [sys.executable, "-m", "tlbench.report", "--tracking-uri", f"sqlite:///{store}",
               "--experiment", "tlbench", "--sweep", SWEEP_ID, "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started, _children_cpu_seconds() - cpu_before


def _children_cpu_seconds() -> float:
    """User + system CPU seconds used by finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    """Build or reuse the store, time one report over it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the measured sweep")
    parser.add_argument("--store", type=Path, help="sqlite file (default: a per-size temp cache)")
    parser.add_argument("--rebuild", action="store_true", help="recreate a cached store")
    parser.add_argument("--out", type=Path, help="report folder (default: a temp folder)")
    args = parser.parse_args()
    store = args.store or default_store(args.runs)
    if args.rebuild:
        store.unlink(missing_ok=True)
    if store.exists():
        print(f"Reusing store {store} (--rebuild to recreate)")
    else:
        print(f"Building store {store} with {args.runs} runs ...")
        print(f"Store creation: {build_store(store, args.runs):.1f}s")
    out = args.out or Path(tempfile.mkdtemp(prefix="tlbench-report-scale-"))
    wall, cpu = time_report(store, out)
    verdict = "within" if wall < BAR_SECONDS else "OVER"
    print(f"Report over {args.runs} runs: {wall:.1f}s wall-clock, {cpu:.1f}s CPU ({verdict} "
          f"the {BAR_SECONDS:.0f}s bar); report in {out}")
    return 0 if wall < BAR_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
