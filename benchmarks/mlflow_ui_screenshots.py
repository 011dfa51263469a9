"""What MLflow's UI shows of a tlbench sweep, in headless Chromium, against a real `mlflow server`.

    python benchmarks/mlflow_ui_screenshots.py --out ui-shots            # logs a tiny sweep first
    python benchmarks/mlflow_ui_screenshots.py --store sqlite:////abs/mlflow.db --out ui-shots

Without --store it logs a 2-job sweep (pixels backbone, synthetic data, about a minute on 2 CPU
cores) into a temporary sqlite store and reports on it (attaching the report to the sweep's parent
run). It then starts `mlflow server` on 127.0.0.1, and writes into --out: experiment-default.png
(the experiment's plain link: MLflow 3.17 opens its GenAI overview), experiment.png (the same with
?workflowType=machine_learning: the runs table with its Dataset column, the jobs grouped under the
sweep's parent run), sweep.png (the link a sweep ends with: filtered to it, best test_accuracy
first), run.png (a job's page, its description shown), parent.png (the sweep's run)
and urls.txt. Needs chromium (or chromium-headless-shell) on PATH: `apt-get install -y chromium`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from tlbench.tracking.server import SERVER_ENV, runs_table_url

# MLflow 3.17's UI opens every experiment in its GenAI view (the mlflow.experimentKind tag no
# longer decides) unless the URL asks for model training or the user once switched to it.
MODEL_TRAINING = "workflowType=machine_learning"
BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
SWEEP = ["-m", "backbone=pixels", "backbone.weights=null", "data=synthetic", "data.n_classes=2",
         "data.images_per_class=20", "trainer.epochs=1", "trainer.patience=null", "seed=0,1"]


def browser() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tiny_sweep(workdir: Path) -> str:
    """Run a 2-job sweep and its report into workdir/mlflow.db; returns the store's URI."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for args in (SWEEP, ["report", "--out", str(workdir / "reports")]):
        subprocess.run([sys.executable, "-m", "tlbench", *args, *(
            [f"tracking.uri={uri}"] if args is SWEEP else ["--tracking-uri", uri])],
            cwd=workdir, env=env, check=True, capture_output=True, text=True, timeout=900)
    return uri


@contextmanager
def mlflow_server(store: str, workdir: Path):
    """`mlflow server` on 127.0.0.1 over `store`; yields its URL once /health answers."""
    port = free_port()
    log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=SERVER_ENV | os.environ)  # without MLflow's job runner, it stops in seconds
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no mlflow server: {workdir}/server.log") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def screenshot(chrome: str, url: str, path: Path, wait_ms: int = 20000) -> None:
    """A 1600x1000 PNG of `url` once the page's scripts have had `wait_ms` of virtual time."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--user-data-dir={profile}",
                        "--window-size=1600,1000", f"--virtual-time-budget={wait_ms}",
                        f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)


def pages(store: str, url: str, experiment: str) -> dict[str, str]:
    """name -> page URL: the experiment as it opens, a job's run and the sweep's parent run."""
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
    job = next((r for r in runs if "mlflow.parentRunId" in r.data.tags), runs[0])
    parent = job.data.tags.get("mlflow.parentRunId")
    base = f"{url}/#/experiments/{experiment_id}"
    return {"experiment-default": base, "experiment": f"{base}?{MODEL_TRAINING}",
            "sweep": runs_table_url(url, experiment_id, job.data.tags["sweep_id"]),
            "run": f"{base}/runs/{job.info.run_id}?{MODEL_TRAINING}"} | (
        {"parent": f"{base}/runs/{parent}?{MODEL_TRAINING}"} if parent else {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("mlflow-ui-screenshots"))
    parser.add_argument("--store", help="an existing tracking store (default: log a tiny sweep)")
    parser.add_argument("--experiment", default="tlbench")
    args = parser.parse_args(argv)
    chrome = browser()
    if chrome is None:
        print("no chromium on PATH: apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        store = args.store or log_tiny_sweep(workdir)
        with mlflow_server(store, workdir) as url:
            shots = pages(store, url, args.experiment)
            for name, page in shots.items():
                screenshot(chrome, page, args.out / f"{name}.png")
    (args.out / "urls.txt").write_text("".join(f"{n}: {u}\n" for n, u in shots.items()))
    print(f"wrote {', '.join(f'{n}.png' for n in shots)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
