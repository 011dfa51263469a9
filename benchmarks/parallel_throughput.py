"""Throughput of 1 worker against 2 (Hydra's joblib launcher) on the same grid, same server.

    python benchmarks/parallel_throughput.py

Both runs log to one real `mlflow server` on 127.0.0.1 (each into its own experiment) and run the
8-job grid below; the script prints wall time, jobs per minute and the 2-worker / 1-worker ratio.
Measure on an otherwise idle machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlbench.tracking.server import serve

GRID = ["backbone=vgg16", "backbone.weights=null",
        "strategy=feature_extraction,partial_finetune", "data.train_size=5,10,20,40",
        "trainer.epochs=2", "trainer.patience=null"]
WORKERS = {"1 worker (basic launcher)": [],
           "2 workers (joblib, n_jobs=2)": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed_sweep(uri: str, folder: str, experiment: str, launcher: list[str]) -> float:
    """Wall time of one multirun of GRID."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlbench", "-m", *GRID, *launcher,
                    f"tracking.uri={uri}", f"tracking.experiment={experiment}"],
                   cwd=folder, check=True, capture_output=True,
                   env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - start


def main() -> None:
    """Run the grid with 1 and with 2 workers and print the ratio."""
    jobs = 8
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with serve(f"sqlite:///{root / 'server.db'}", root / "artifacts", free_port(),
                   root / "server.log") as uri:
            seconds = {name: timed_sweep(uri, folder, f"throughput-{i}", launcher)
                       for i, (name, launcher) in enumerate(WORKERS.items())}
    for name, wall in seconds.items():
        print(f"{name:30s} {wall:6.1f} s  {jobs / wall * 60:5.1f} jobs/min")
    one, two = seconds.values()
    print(f"2 workers / 1 worker throughput: {one / two:.2f}x (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
