"""Sweeps: ready grids, stable ids, dry runs, resume after SIGKILL, recorded failures, parallel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tlbench.config import parse_config
from tlbench.sweep import eta_seconds, grid_size, register_sweeps, summary, sweep_id_of
from tlbench.tracking.server import serve
from tlbench.tracking.store import check_tracking_store

from .conftest import compose_config
from .test_cli import runs_of, tlbench

VGG_TINY = ["backbone=vgg16", "backbone.weights=null", "trainer.epochs=1", "trainer.patience=null"]


def test_grid_size_counts_the_product():
    assert grid_size(["backbone=a,b", "strategy=x,y,z", "seed=0"]) == 6
    assert grid_size(["seed=range(0,3)"]) == 3
    assert grid_size(["trainer.lr=interval(0.1,1)"]) is None


def test_sweep_id_is_stable_and_ignores_tracking():
    first = sweep_id_of(["+sweep=quick", "seed=0,1", "tracking.uri=sqlite:///a.db"])
    assert first == sweep_id_of(["seed=0,1", "+sweep=quick", "tracking.uri=http://x"])
    assert first.startswith("quick-")
    assert first != sweep_id_of(["+sweep=quick", "seed=0,1,2"])


def test_a_suites_sweep_is_named_after_the_suite():
    assert sweep_id_of(["+suite=offline", "backbone=pixels,vgg16"]).startswith("offline-")


def test_eta_uses_trained_jobs_only():
    jobs = [{"status": "done", "seconds": 10}, {"status": "skipped", "seconds": 0.1},
            {"status": "done", "seconds": 20}]
    assert eta_seconds(jobs, total=7, workers=1) == 60
    assert eta_seconds(jobs, total=7, workers=2) == 30
    assert eta_seconds(jobs[1:2], total=7, workers=1) is None


def test_summary_lists_failures(tmp_path):
    (tmp_path / "tlbench_jobs.jsonl").write_text(
        '{"name": "a", "status": "done", "seconds": 1}\n'
        '{"name": "b", "status": "failed", "seconds": 1, "error": "boom"}\n'
        '{"name": "c", "status": "skipped", "seconds": 0}\n')
    assert summary(tmp_path, 75) == [
        "sweep finished in 1m15s: 1 done, 1 skipped (already FINISHED), 1 failed",
        "  FAILED b: boom"]


JOBS = {"quick": 6, "default": 72, "literature": 54, "floor": 27, "tuned": 27, "strategies": 24}


@pytest.mark.parametrize("name", ["quick", "strategies"])
def test_packaged_sweeps_dry_run(tmp_path, name):
    result = tlbench("-m", f"+sweep={name}", "dry_run=true", cwd=tmp_path,
                     uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"dry run: {JOBS[name]} to run, 0 to skip" in result.stdout
    assert f"[{JOBS[name]}/{JOBS[name]}]" in result.stdout
    assert runs_of(f"sqlite:///{tmp_path}/mlflow.db") == []


@pytest.mark.parametrize("name", ["default", "literature", "floor", "tuned"])
def test_packaged_sweep_grid_and_every_value_validate(name):
    """The larger grids without their dry runs (0.3-0.6 s of Hydra composition a job): the job
    count from the sweep's own params, and every swept value composes and validates."""
    from hydra import compose, initialize_config_module

    register_sweeps()  # as `python -m tlbench` does
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        swept = compose(config_name="config", overrides=[f"+sweep={name}"],
                        return_hydra_config=True).hydra.sweeper.params
    assert grid_size([f"{key}={values}" for key, values in swept.items()]) == JOBS[name]
    for key, values in swept.items():
        for value in str(values).split(","):
            parse_config(compose_config([f"+sweep={name}", f"{key}={value}"]))


def test_failed_job_is_recorded_and_the_sweep_continues(tmp_path):
    uri, folder = f"sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/sweep"
    result = tlbench("-m", *VGG_TINY, "data.train_size=500,5", folder, cwd=tmp_path, uri=uri)
    assert result.returncode != 0
    assert "1 done, 0 skipped (already FINISHED), 1 failed" in result.stdout
    assert "FAILED vgg16-feature_extraction-n500-s0: data.train_size=500" in result.stdout
    status = {run.info.run_name: run.info.status for run in runs_of(uri)}
    assert status == {"vgg16-feature_extraction-n500-s0": "FAILED",
                      "vgg16-feature_extraction-n5-s0": "FINISHED"}
    # Launched again into the same folder: the earlier launch's failure is not this one's.
    for extra in (["dry_run=true"], []):
        again = tlbench("-m", *VGG_TINY, "data.train_size=5,4", folder, *extra, cwd=tmp_path,
                        uri=uri)
        assert again.returncode == 0, again.stderr[-2000:]
    assert "1 done, 1 skipped (already FINISHED), 0 failed" in again.stdout
    client = MlflowClient(uri)
    parents = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id],
                                 "tags.`tlbench.kind` = 'sweep'", order_by=["start_time"])
    assert [run.info.status for run in parents] == ["FAILED", "FINISHED"]


def wait_for(condition, timeout: float, every: float = 0.5) -> None:
    """Poll until condition() is true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def stopped_mid_run(group: int, uri: str) -> bool:
    """Stop the process group; true if it stopped with a run FINISHED and one RUNNING (a run
    can end between a look and a kill), else let it go on."""
    os.killpg(group, signal.SIGSTOP)
    try:
        if {"FINISHED", "RUNNING"} <= {r.info.status for r in runs_of(uri)}:
            return True
    except Exception as exc:  # noqa: BLE001 - narrowed to a lock just below
        if not is_locked(exc):  # stopped while committing: the store is locked; else a failure
            raise
    os.killpg(group, signal.SIGCONT)
    return False


def is_locked(exc: Exception) -> bool:
    """Whether a store call failed only because another process holds the sqlite file's lock
    (worth polling again); any other store error should fail the test that polls."""
    return "database is locked" in str(exc)


def test_sigkill_mid_sweep_then_rerun_gives_one_finished_run_per_config(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", *VGG_TINY, "strategy=feature_extraction,scratch", "data.train_size=5,10"]
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    check_tracking_store(uri)  # the schema exists before this test's polling opens the store
    sweep = subprocess.Popen([sys.executable, "-m", "tlbench", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_for(lambda: stopped_mid_run(sweep.pid, uri), 300)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    before = {r.info.run_id: r.info.status for r in runs_of(uri)}
    assert "RUNNING" in before.values()

    rerun = tlbench(*args, cwd=tmp_path, uri=uri)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    skipped = sum(status == "FINISHED" for status in before.values())
    assert f"{4 - skipped} done, {skipped} skipped (already FINISHED), 0 failed" in rerun.stdout
    runs = runs_of(uri)
    finished = [r.data.tags["config_hash"] for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 4
    stale = [r for r in runs if r.info.run_id in before and before[r.info.run_id] == "RUNNING"]
    assert {r.info.status for r in stale} == {"KILLED"}
    assert not any(r.info.status == "RUNNING" for r in runs)
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1


def test_resume_false_forces_a_rerun(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for extra in ([], ["tracking.resume=false"]):
        result = tlbench(*VGG_TINY, "data.train_size=2", *extra, cwd=tmp_path, uri=uri)
        assert result.returncode == 0, result.stderr[-2000:]
    assert [r.info.status for r in runs_of(uri)] == ["FINISHED", "FINISHED"]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_parallel_workers_log_to_a_real_server(tmp_path):
    backend = f"sqlite:///{tmp_path}/server.db"
    log_file = tmp_path / "server.log"
    with serve(backend, tmp_path / "artifacts", free_port(), log_file) as uri:
        result = tlbench("-m", *VGG_TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                         "data.train_size=2,3,4,5",
                         f"tracking.uri={uri}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs = runs_of(uri)
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        client = MlflowClient(uri)
        for run in runs:
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert "confusion_matrix.png" in names
    assert "4 done" in result.stdout
    assert Path(tmp_path / "artifacts").is_dir()


@pytest.mark.skipif(not os.environ.get("TLBENCH_TEST_POSTGRES_URI"),
                    reason="needs TLBENCH_TEST_POSTGRES_URI (.ci/run starts PostgreSQL)")
def test_server_with_postgresql_backend(tmp_path):
    backend = os.environ["TLBENCH_TEST_POSTGRES_URI"]
    log_file = tmp_path / "server.log"
    with serve(backend, tmp_path / "artifacts", free_port(), log_file) as uri:
        experiment = f"pg-{tmp_path.name}-{os.getpid()}"  # the database outlives one test
        result = tlbench("-m", *VGG_TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                         "data.train_size=2,3", f"tracking.uri={uri}",
                         f"tracking.experiment={experiment}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:] + log_file.read_text()[-2000:]
        runs = runs_of(uri, experiment)
    assert sorted(r.info.run_name for r in runs) == [
        "vgg16-feature_extraction-n2-s0", "vgg16-feature_extraction-n3-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_submitit_local_launcher(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", *VGG_TINY, "hydra/launcher=submitit_local", "data.train_size=2,3",
                     cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 done, 0 skipped (already FINISHED), 0 failed" in result.stdout
    assert {r.info.status for r in runs_of(uri)} == {"FINISHED"} and len(runs_of(uri)) == 2


# The launcher starts the Ray head itself, bound to 127.0.0.1 (`ray start --head` here binds the
# machine's own address, not loopback, whatever --node-ip-address says).
RAY_LOCAL_HEAD = ["hydra/launcher=ray", "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
                  "+hydra.launcher.ray.init.num_cpus=2",
                  "+hydra.launcher.ray.init.include_dashboard=false"]


def test_ray_launcher_with_a_local_head_logs_to_a_server(tmp_path):
    log_file = tmp_path / "server.log"
    with serve(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", free_port(),
               log_file) as uri:
        result = tlbench("-m", *VGG_TINY, *RAY_LOCAL_HEAD, "data.train_size=2,3",
                         f"tracking.uri={uri}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs = runs_of(uri)
    assert sorted(r.info.run_name for r in runs) == [
        "vgg16-feature_extraction-n2-s0", "vgg16-feature_extraction-n3-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert "2 done, 0 skipped (already FINISHED), 0 failed" in result.stdout
