"""Peak resident memory over a 20-run sequential sweep in one process (Keras session cleared).

    python benchmarks/sweep_memory.py

Runs `python -m tlbench -m` over 2 backbones x 2 strategies x 5 sizes (1 epoch, 32 px) into a
temporary sqlite store, then prints each run's `process_peak_rss_mb` in launch order and the
growth from the 5th to the 20th job: a flat tail means memory does not grow without bound.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["backbone=vgg16,mobilenetv2", "backbone.weights=null",
        "strategy=feature_extraction,scratch", "data.train_size=2,3,4,5,6",
        "trainer.epochs=1", "trainer.patience=null"]


def main() -> None:
    """Run the sweep and print the memory profile."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlbench", "-m", *GRID, f"tracking.uri={uri}"],
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
