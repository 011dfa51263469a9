"""Peak resident memory over a 20-run sequential sweep in one process (Keras session cleared).

    python benchmarks/sweep_memory.py [--backbones vgg16,mobilenetv2]
                                      [--strategies feature_extraction,scratch]

Runs `python -m tlbench -m` over the backbones x strategies x 5 sizes (1 epoch, 32 px, random
weights) into a temporary sqlite store, then prints each run's `process_peak_rss_mb` in launch
order and the growth from the 5th to the last job: a flat tail means memory does not grow
without bound. Set PYTHONPATH to a folder holding another `tlbench` package to profile that code.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXED = ["backbone.weights=null", "data.train_size=2,3,4,5,6", "trainer.epochs=1",
         "trainer.patience=null"]


def main() -> None:
    """Run the sweep and print the memory profile."""
    from mlflow.tracking import MlflowClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vgg16,mobilenetv2")
    parser.add_argument("--strategies", default="feature_extraction,scratch")
    args = parser.parse_args()
    grid = [f"backbone={args.backbones}", f"strategy={args.strategies}", *FIXED]

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlbench", "-m", *grid, f"tracking.uri={uri}"],
                       cwd=folder, check=True, capture_output=True,
                       env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
        wall = time.perf_counter() - start
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tlbench").experiment_id
        runs = sorted(client.search_runs([experiment], "tags.config_hash != ''"),  # the jobs
                      key=lambda run: run.info.start_time)
    peaks = [run.data.metrics["process_peak_rss_mb"] for run in runs]
    for index, (run, peak) in enumerate(zip(runs, peaks, strict=True), start=1):
        print(f"{index:2d} {run.info.run_name:40s} peak RSS {peak:7.0f} MiB")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{len(runs)} runs in {wall:.0f} s; sweep process peak RSS {children:.0f} MiB; "
          f"growth job 5 -> {len(runs)}: {peaks[-1] - peaks[4]:+.0f} MiB")


if __name__ == "__main__":
    main()
