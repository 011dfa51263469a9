"""Cut activations cached as float16 against float32: the accuracy difference, disk and time.

    python benchmarks/cut_dtype.py [--seeds 5] [--strategies partial_finetune,gradual_unfreeze]
                                   [--work DIR] [OVERRIDE ...]

For each cache.dtype, one whole `python -m tlbench -m` sweep over the strategies and seeds (the
main job's defaults plus OVERRIDEs: digits 5-9 from a MobileNetV2 pretrained on digits 0-4),
each dtype with its own empty feature cache (cache.dir) and one shared source checkpoint
(pretrain.cache_dir, pretrained before either sweep). Reported: per strategy, the test accuracy
of each dtype (mean over seeds), the largest difference of a seed's pair, the bytes the feature
cache holds after the sweep, and each sweep's wall time (which includes filling its cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ("float32", "float16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    parser.add_argument("--strategies", default="partial_finetune,gradual_unfreeze")
    parser.add_argument("--work", type=Path, help="folder for stores and caches (default: a tmp)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every run")
    return parser.parse_args(argv)


def sweep(work: Path, dtype: str, args: argparse.Namespace) -> float:
    """One `python -m tlbench -m` sweep at cache.dtype; its wall time in seconds."""
    seeds = ",".join(str(seed) for seed in range(args.seeds))
    overrides = [f"strategy={args.strategies}", f"seed={seeds}", f"cache.dtype={dtype}",
                 f"cache.dir={work / dtype}", f"pretrain.cache_dir={work / 'pretrained'}",
                 f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"tracking.experiment={dtype}",
                 f"hydra.sweep.dir={work / 'multirun' / dtype}", *args.overrides]
    env = dict(os.environ, TLBENCH_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlbench", "-m", *overrides], env=env, cwd=work,
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def pretrain(work: Path, args: argparse.Namespace) -> None:
    """The shared source checkpoint, trained once by a run the sweeps do not count."""
    env = dict(os.environ, TLBENCH_CACHE=str(work / "cache"))
    subprocess.run([sys.executable, "-m", "tlbench", "strategy=feature_extraction",
                    f"pretrain.cache_dir={work / 'pretrained'}", f"cache.dir={work / 'warm'}",
                    f"tracking.uri=sqlite:///{work / 'warm.db'}", f"hydra.run.dir={work / 'out'}",
                    *args.overrides], env=env, cwd=work, check=True, stdout=subprocess.DEVNULL)


def accuracies(work: Path, dtype: str) -> dict[tuple[str, int], float]:
    """(strategy, seed) -> test accuracy of the dtype's finished runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(dtype).experiment_id
    runs = client.search_runs([experiment], "attributes.status = 'FINISHED'", max_results=1000)
    return {(run.data.params["strategy.name"], int(run.data.params["seed"])):
            run.data.metrics["test_accuracy"]
            for run in runs if "test_accuracy" in run.data.metrics}


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under folder."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        pretrain(work, args)
        walls = {dtype: sweep(work, dtype, args) for dtype in DTYPES}
        scores = {dtype: accuracies(work, dtype) for dtype in DTYPES}
        print(f"{args.seeds} seeds, strategies {args.strategies}, overrides {args.overrides}")
        for strategy in args.strategies.split(","):
            pairs = [(scores["float32"][key], scores["float16"][key])
                     for key in sorted(scores["float32"]) if key[0] == strategy
                     and key in scores["float16"]]
            wide, half = zip(*pairs, strict=True)
            largest = max(abs(a - b) for a, b in pairs)
            print(f"{strategy}: test accuracy float32 {statistics.mean(wide):.4f}, float16 "
                  f"{statistics.mean(half):.4f} (mean of {len(pairs)} seeds); difference "
                  f"{statistics.mean(half) - statistics.mean(wide):+.4f}, largest of a seed "
                  f"{largest:.4f}")
        for dtype in DTYPES:
            print(f"{dtype}: feature cache {disk_bytes(work / dtype) / 2**20:.1f} MiB, sweep "
                  f"{walls[dtype]:.0f} s")


if __name__ == "__main__":
    main()
