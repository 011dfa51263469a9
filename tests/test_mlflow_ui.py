"""What MLflow's UI shows of a sweep, through the real CLI and a real sqlite store: a multirun is a
parent run with its jobs as children, a rerun reuses the parent, a failed job ends it FAILED, and
the report is attached to it. The browser check itself is benchmarks/mlflow_ui_screenshots.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tlbench.report.__main__ import main as report_main
from tlbench.sweep import SweepCallback, open_parent_run, start_parent, sweep_id_of
from tlbench.tracking.runs import tracked_run
from tlbench.tracking.store import OPEN_PARENTS, SWEEP_KIND, ensure_experiment

PARENT = "mlflow.parentRunId"
TINY = ["backbone=pixels", "backbone.weights=null", "data=synthetic", "data.n_classes=2",
        "data.images_per_class=20", "trainer.epochs=1", "trainer.patience=null"]


def tlbench(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess:
    """`python -m tlbench ARGS` into the store at `uri`, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "tlbench", *args, f"tracking.uri={uri}"],
                          cwd=cwd, env=env, text=True, capture_output=True, timeout=600)


def runs_by_kind(uri: str) -> tuple[list, list]:
    """(the sweeps' parent runs, every other run) of the tlbench experiment."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    parents = [r for r in runs if r.data.tags.get("tlbench.kind") == SWEEP_KIND]
    return parents, [r for r in runs if r not in parents]


def test_a_sweep_is_a_parent_run_reused_on_rerun_and_given_the_report(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = tlbench("-m", *TINY, "seed=0,1", cwd=tmp_path, uri=uri)
    assert first.returncode == 0, first.stderr[-2000:]
    (parent,), children = runs_by_kind(uri)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert parent.info.run_name == parent.data.tags["sweep_id"]
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    assert {c.data.tags["sweep_id"] for c in children} == {parent.data.tags["sweep_id"]}
    assert parent.data.tags["mlflow.note.content"].startswith("FINISHED: sweep finished in")
    assert parent.data.tags["command"].startswith("python -m tlbench -m backbone=pixels")

    rerun = tlbench("-m", *TINY, "seed=0,1", cwd=tmp_path, uri=uri)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "0 done, 2 skipped (already FINISHED), 0 failed" in rerun.stderr + rerun.stdout
    (again,), same_children = runs_by_kind(uri)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert sorted(c.info.run_id for c in same_children) == sorted(c.info.run_id for c in children)

    assert report_main(["--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 0
    client = MlflowClient(uri)
    attached = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    stem = f"tlbench-{parent.data.tags['sweep_id']}"
    assert f"report/{stem}.md" in attached and f"report/{stem}-learning-curves.png" in attached
    report = (tmp_path / "reports" / f"{stem}.md").read_text()
    assert "**Runs:** 2: 2 finished, 0 failed, 0 other" in report  # the parent left out


def test_a_failed_job_ends_the_parent_failed_never_running(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", *TINY, "data.train_size=5,1000", cwd=tmp_path, uri=uri)
    assert result.returncode != 0
    (parent,), children = runs_by_kind(uri)
    assert parent.info.status == "FAILED"
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    assert "1 failed" in parent.data.tags["mlflow.note.content"]


def test_jobs_join_only_a_running_parent_which_stale_checks_never_kill(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "tlbench")
    parent = open_parent_run(client, experiment_id, "sweep-x", "python -m tlbench -m seed=0,1")
    client.set_tag(parent, "heartbeat", "0")  # would be long stale, were it a job's run
    with tracked_run(tiny_config(), uri, {"sweep_id": "sweep-x"}) as child:
        pass
    assert client.get_run(child).data.tags[PARENT] == parent
    assert client.get_run(parent).info.status == "RUNNING"
    client.set_terminated(parent, "FINISHED")
    with tracked_run(tiny_config("seed=1"), uri, {"sweep_id": "sweep-x"}) as single:
        pass  # a single run whose overrides match a finished multirun's stays on its own
    assert PARENT not in client.get_run(single).data.tags


def test_jobs_of_a_sweep_this_process_opened_find_its_parent_without_a_search(
        tmp_path, tiny_config, monkeypatch):
    """The launching process's `start_parent` records the parent it opened; its jobs' runs
    name it without searching the store, and closing the sweep forgets it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    launch = OmegaConf.create({  # the keys of a multirun's config that start_parent reads
        "tracking": {"uri": uri, "experiment": "tlbench"},
        "hydra": {"sweeper": {"params": None}, "overrides": {"task": ["seed=0,1"]}}})
    _, parent = start_parent(launch, tmp_path)
    sweep_id = sweep_id_of(["seed=0,1"])
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("tlbench").experiment_id
    assert OPEN_PARENTS[(uri, experiment_id, sweep_id)] == parent
    queries: list[str] = []
    search = MlflowClient.search_runs
    monkeypatch.setattr(MlflowClient, "search_runs", lambda self, *args, **kwargs: (
        queries.append(str(args) + str(kwargs)), search(self, *args, **kwargs))[1])
    with tracked_run(tiny_config(), uri, {"sweep_id": sweep_id}) as child:
        pass
    assert client.get_run(child).data.tags[PARENT] == parent
    assert not [query for query in queries if "sweep_id" in query]
    monkeypatch.setattr(SweepCallback, "parent", (uri, parent))
    monkeypatch.setattr(SweepCallback, "folder", tmp_path)
    SweepCallback.end_parent(completed=True)
    assert (uri, experiment_id, sweep_id) not in OPEN_PARENTS
    assert client.get_run(parent).info.status == "FINISHED"
