"""Two sweeps launched in the same second from one folder (a script, a job array) through the real
CLI: each keeps its own Hydra folder, sweep_id, parent run and summary."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from .test_cli import runs_of

TINY = [
    "backbone=pixels",
    "data.input_size=32",
    "data.train_size=5",
    "data.classes=[5,6]",
    "trainer.epochs=1",
    "trainer.patience=null",
]

# `python -m tlbench` after its imports, started at a shared instant: the sweeps' clocks agree
# to the second, as for a job array started at once.
LAUNCH_AT = """
import sys, time
from pathlib import Path
import tlbench.__main__ as cli
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.is_file():
    time.sleep(0.01)
time.sleep(max(0.0, float(go.read_text()) - time.time()))
sys.argv = ["tlbench", *sys.argv[3:]]
cli.main()
"""


def launch_together(workdir: Path, uri: str, *sweeps: list[str]) -> list[subprocess.Popen]:
    """Start one CLI per sweep in `workdir`, every one at the same whole second."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = uri
    go = workdir / "go"
    readies = [workdir / f"ready{index}" for index in range(len(sweeps))]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCH_AT, str(ready), str(go), "-m", *TINY, *overrides],
            cwd=workdir,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for ready, overrides in zip(readies, sweeps, strict=True)
    ]
    deadline = time.monotonic() + 120
    while not all(ready.is_file() for ready in readies) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.write_text(str(int(time.time()) + 1.05))  # just after the next second starts
    return processes


def test_sweeps_launched_in_the_same_second_keep_apart(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = launch_together(tmp_path, uri, ["seed=0,1"], ["seed=2,3", "trainer.lr=0.01"])
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    for process, (stdout, stderr) in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
        assert "sweep finished in" in stdout and ": 2 done, 0 skipped" in stdout, stdout
    folders = sorted(path.parent for path in tmp_path.glob("multirun/*/*/multirun.yaml"))
    assert len(folders) == 2, folders
    stamps = {folder.parent.name + folder.name.rsplit("-", 2)[0] for folder in folders}
    assert len(stamps) == 1, f"not launched in the same second: {folders}"  # the collision case
    runs = runs_of(uri)
    by_seed = {run.data.params["seed"]: run for run in runs}
    assert sorted(by_seed) == ["0", "1", "2", "3"]
    sweep_ids = [
        {by_seed[seed].data.tags["sweep_id"] for seed in seeds}
        for seeds in (("0", "1"), ("2", "3"))
    ]
    assert [len(ids) for ids in sweep_ids] == [1, 1] and sweep_ids[0] != sweep_ids[1]
    parents = [
        {by_seed[seed].data.tags["mlflow.parentRunId"] for seed in seeds}
        for seeds in (("0", "1"), ("2", "3"))
    ]
    assert [len(ids) for ids in parents] == [1, 1] and parents[0] != parents[1]
    client = MlflowClient(uri)
    for ids, parent in zip(sweep_ids, parents, strict=True):
        assert client.get_run(parent.pop()).data.tags["sweep_id"] == ids.pop()
    for run in runs:  # each job ran in its own sweep's folder
        folder = Path(run.data.tags["hydra_output_dir"]).parent
        changed = "trainer.lr=0.01" in (folder / "multirun.yaml").read_text()
        assert changed == (run.data.params["seed"] in ("2", "3")), run.info.run_name


def test_the_sweep_folder_is_the_date_the_time_and_the_launch(tmp_path):
    """`multirun/<date>/<HH-MM-SS>-<pid>-<4 hex>`: readable, sorted by time, unique per launch."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (process,) = launch_together(tmp_path, uri, ["seed=0,1", "dry_run=true"])
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    (folder,) = (path.parent for path in tmp_path.glob("multirun/*/*/multirun.yaml"))
    hours, minutes, seconds, pid, tag = folder.name.split("-")
    assert time.strptime(f"{folder.parent.name} {hours}:{minutes}:{seconds}", "%Y-%m-%d %H:%M:%S")
    assert pid == str(process.pid) and len(tag) == 4 and int(tag, 16) >= 0
