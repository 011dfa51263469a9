"""Fault injection with real files, processes and stores: a damaged feature cache, a full disk,
SIGTERM mid-run, a worker on another host, a malformed jobs file, a class name that is math
text, an artifact that fails, and a password in the tracking URI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlbench import rowsync
from tlbench.rowcache import RowFile, cached_rows
from tlbench.rowsync import read_key, wait_for_syncs, write_key
from tlbench.sweep import eta_seconds, read_jobs, summary
from tlbench.tracking.runs import (
    STALE_SECONDS,
    heartbeat,
    kill_stale_runs,
    log_confusion_matrix,
    log_result,
    tracked_run,
)
from tlbench.tracking.server import exposure_warning
from tlbench.tracking.store import check_tracking_store, ensure_experiment, redact

KEY = {"format": 1, "test": "faults"}


def squares(asked: list[int]):
    """Rows (p, p^2) for positions p, recording which positions were computed."""

    def compute(positions: np.ndarray):
        asked.extend(int(p) for p in positions)
        yield positions, np.stack([positions + 1.0, positions**2.0 + 1], axis=1).astype(np.float32)

    return compute


def expected(positions) -> list[list[float]]:
    return [[p + 1.0, p**2 + 1.0] for p in positions]


def filled_entry(folder: Path, n_rows: int = 10) -> None:
    """A cache entry with every row computed."""
    cached_rows(folder, KEY, np.arange(n_rows), n_rows, squares([]))


def test_truncated_rows_are_rebuilt_never_served_as_zeros(tmp_path):
    folder = tmp_path / "e"
    filled_entry(folder)
    rows_file = folder / "rows.npy"
    os.truncate(rows_file, rows_file.stat().st_size - 3 * 8)  # an interrupted copy: 3 rows short
    asked: list[int] = []
    rows, computed, _ = cached_rows(folder, KEY, np.array([2, 9]), 10, squares(asked))
    assert rows.read([2, 9]).tolist() == expected([2, 9]) and computed == 2 and asked == [2, 9]
    assert np.load(folder / "done.npy").tolist() == [i in (2, 9) for i in range(10)]
    rows, computed, _ = cached_rows(folder, KEY, np.arange(10), 10, squares(asked))
    assert rows.read(np.arange(10)).tolist() == expected(range(10)) and computed == 8


def test_rows_of_another_shape_rebuild_rows_and_mask_together(tmp_path):
    folder = tmp_path / "e"
    filled_entry(folder)
    np.save(folder / "rows.npy", np.zeros((10, 3), dtype=np.float32))  # done.npy still all True
    asked: list[int] = []
    rows, computed, _ = cached_rows(folder, KEY, np.array([0, 5]), 10, squares(asked))
    assert rows.read([0, 5]).tolist() == expected([0, 5]) and sorted(asked) == [0, 5]
    np.save(folder / "rows.npy", np.zeros((10, 3), dtype=np.float32))
    asked.clear()
    rows, computed, _ = cached_rows(folder, KEY, np.array([0, 5, 7]), 10, squares(asked))
    assert rows.read([0, 5, 7]).tolist() == expected([0, 5, 7])
    assert computed == 3  # 7 missing, 0 and 5 redone
    assert np.load(folder / "done.npy").sum() == 3


@pytest.mark.parametrize("damage", [b"", b"garbage, not an npy file", None])
def test_corrupt_done_mask_rebuilds_the_entry(tmp_path, damage):
    folder = tmp_path / "e"
    filled_entry(folder)
    if damage is None:
        np.save(folder / "done.npy", np.ones(7, dtype=bool))  # a mask of another source size
    else:
        (folder / "done.npy").write_bytes(damage)
    asked: list[int] = []
    rows, computed, _ = cached_rows(folder, KEY, np.array([1, 3]), 10, squares(asked))
    assert rows.read([1, 3]).tolist() == expected([1, 3]) and computed == 2


needs_boot_id = pytest.mark.skipif(rowsync.boot_id() is None,
                                   reason="no boot id here: rows are synced before marked done")


@needs_boot_id
def test_a_fill_is_served_before_its_rows_reach_the_disk_then_unmarked(tmp_path):
    folder = tmp_path / "e"
    filled_entry(folder)
    mark = read_key(folder).get("unsynced")
    wait_for_syncs()
    assert mark is None or mark["boot_id"] == rowsync.boot_id()  # the sync may be done already
    assert "unsynced" not in read_key(folder)


@needs_boot_id
@pytest.mark.parametrize(("host", "rebuilt"), [(socket.gethostname(), True), ("elsewhere", False)])
def test_rows_unsynced_when_the_machine_restarted_are_rebuilt(tmp_path, host, rebuilt):
    folder = tmp_path / "e"
    filled_entry(folder)
    wait_for_syncs()
    earlier_boot = {"host": host, "boot_id": "an-earlier-boot", "fill": "f"}
    write_key(folder, read_key(folder) | {"unsynced": earlier_boot})
    asked: list[int] = []
    rows, computed, _ = cached_rows(folder, KEY, np.arange(10), 10, squares(asked))
    assert rows.read(np.arange(10)).tolist() == expected(range(10))
    assert computed == (10 if rebuilt else 0)


def test_a_scratch_entry_is_never_synced_so_it_can_be_removed_at_once(tmp_path):
    folder = tmp_path / "scratch"
    cached_rows(folder, KEY, np.arange(10), 10, squares([]), durable=False)
    assert "unsynced" not in read_key(folder)
    shutil.rmtree(folder)  # as the run's end removes it: no background write races the removal
    wait_for_syncs()
    assert not folder.exists()


@needs_boot_id
def test_a_failed_background_sync_drops_the_mask(tmp_path, caplog):
    folder = tmp_path / "e"
    filled_entry(folder)
    wait_for_syncs()
    reader, writer = os.pipe()
    failed = rowsync.SYNCS.submit(os.fsync, reader)  # a real OSError (EINVAL), as a failed sync
    rows = RowFile.open(folder / "rows.npy", 10)
    with caplog.at_level("WARNING", "tlbench"):
        rowsync.SYNCS.submit(rowsync.sync_then_unmark, folder, rows, {"fill": "f"},
                              "feature cache", failed).result()
    os.close(reader), os.close(writer)
    assert "could not be written to disk" in caplog.text and not (folder / "done.npy").exists()
    asked: list[int] = []
    cached_rows(folder, KEY, np.arange(10), 10, squares(asked))
    assert sorted(asked) == list(range(10))


EXITS_AFTER_A_FILL = """
import sys
from pathlib import Path
import numpy as np
from tlbench.rowcache import cached_rows
cached_rows(Path(sys.argv[1]), {"k": 1}, np.arange(20000), 20000,
            lambda p: [(p, np.ones((len(p), 1024), dtype=np.float32))])
"""


@needs_boot_id
def test_a_process_ending_after_a_fill_waits_for_its_rows_to_reach_the_disk(tmp_path):
    folder = tmp_path / "e"
    result = subprocess.run([sys.executable, "-c", EXITS_AFTER_A_FILL, str(folder)],
                            text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_key(folder)["row_shape"] == [1024] and "unsynced" not in read_key(folder)


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from tlbench.errors import TlbenchError
from tlbench.rowcache import cached_rows
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    cached_rows(Path(sys.argv[1]), {"k": 1}, np.arange(4000), 4000,
                lambda p: [(p, np.ones((len(p), 16), dtype=np.float32))], what="feature cache")
except TlbenchError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_full_disk_fails_with_one_line_and_leaves_the_entry_consistent(tmp_path):
    folder = tmp_path / "e"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(folder)], text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"feature cache {folder}: cannot write") and "cache.dir" in line
    assert not (folder / "done.npy").exists() or not np.load(folder / "done.npy").any()
    rows, computed, _ = cached_rows(folder, {"k": 1}, np.array([0, 3999]), 4000,
                                    lambda p: [(p, np.full((len(p), 16), 2.0, np.float32))])
    assert computed == 2 and (rows.read([0, 3999]) == 2.0).all()


def test_sigterm_mid_run_ends_the_run_killed_and_the_summary_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    check_tracking_store(uri)  # the schema exists before this test's polling opens the store
    process = subprocess.Popen(
        [sys.executable, "-m", "tlbench", "-m", "strategy=full_retrain", "data=synthetic",
         "data.images_per_class=40", "data.n_classes=2", "trainer.epochs=500",
         "trainer.patience=null", "backbone.weights=null", f"tracking.uri={uri}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not _running_runs(uri):
            assert process.poll() is None and time.monotonic() < deadline, "run never started"
            time.sleep(0.5)
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    parent, run = sorted(MlflowClient(uri).search_runs([_experiment_id(uri)]),
                         key=lambda r: r.info.start_time)
    assert run.info.status == "KILLED" and parent.info.status == "KILLED"  # the sweep's too
    assert run.data.tags["error"] == "Terminated: signal SIGTERM"
    assert run.data.tags["mlflow.note.content"] == "KILLED: Terminated: signal SIGTERM"
    assert "1 killed (rerun the command to resume)" in output
    assert "Traceback" not in output


def _experiment_id(uri: str) -> str:
    return MlflowClient(uri).get_experiment_by_name("tlbench").experiment_id


def _running_runs(uri: str) -> list:
    """The store's RUNNING job runs: none before the CLI creates the experiment or while it
    holds the sqlite lock; any other store error fails the test."""
    from .test_sweep import is_locked

    try:
        experiment = MlflowClient(uri).get_experiment_by_name("tlbench")
        return [] if experiment is None else MlflowClient(uri).search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING' and tags.config_hash != ''")
    except Exception as exc:  # noqa: BLE001 - narrowed to a lock just below
        if not is_locked(exc):
            raise
        return []


def _running(client: MlflowClient, experiment_id: str, **tags: str) -> str:
    """A RUNNING run of config_hash 'c' with these tags, as another worker would leave it."""
    return client.create_run(experiment_id, tags={"config_hash": "c"} | tags).info.run_id


def test_liveness_is_the_heartbeat_not_the_host(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "tlbench")
    now = time.time()
    alive_elsewhere = _running(client, experiment_id, host="node-7", pid="12",
                               heartbeat=f"{now - 5:.0f}")
    dead_elsewhere = _running(client, experiment_id, host="node-7", pid="13",
                              heartbeat=f"{now - STALE_SECONDS - 60:.0f}")
    dead_here = _running(client, experiment_id, host=os.uname().nodename, pid="999999999",
                         heartbeat=f"{now:.0f}")
    killed = kill_stale_runs(client, experiment_id, "c")
    assert sorted(killed) == sorted([dead_elsewhere, dead_here])
    assert client.get_run(alive_elsewhere).info.status == "RUNNING"
    assert client.get_run(dead_elsewhere).info.status == "KILLED"


def test_the_heartbeat_is_refreshed_while_the_run_works(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = _running(client, ensure_experiment(client, "tlbench"), heartbeat="0")
    with heartbeat(uri, run_id, every=0.2):
        time.sleep(1.5)
    assert time.time() - float(client.get_run(run_id).data.tags["heartbeat"]) < 5


def test_malformed_jobs_lines_never_fail_progress(tmp_path):
    (tmp_path / "tlbench_jobs.jsonl").write_text(
        '{"name": "a", "status": "done", "seconds": 10}\n'
        '{"name": "b", "status": "do\n'  # a half-written append
        'not json at all\n'
        '[1, 2]\n'
        '{"name": "c", "status": "done", "seconds": "slow"}\n'
        '{"name": "d", "status": "killed", "seconds": 3, "error": "Terminated"}\n')
    jobs = read_jobs(tmp_path)
    assert [job["name"] for job in jobs] == ["a", "c", "d"]
    assert eta_seconds(jobs, total=5, workers=1) == 10.0  # mean of 10 and 0 over 2 remaining
    assert summary(tmp_path, 60)[0] == ("sweep stopped in 1m00s: 2 done, 0 skipped (already "
                                        "FINISHED), 0 failed, 1 killed (rerun the command to "
                                        "resume)")


def test_math_text_and_many_classes_never_fail_a_finished_run(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    names = ("$x^$", "a,b", "$\\frac{", "plain")
    with tracked_run(tiny_config(), uri, {}) as run_id:
        log_confusion_matrix(uri, run_id, np.eye(4, dtype=int) * 3, names)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {f.path for f in client.list_artifacts(run_id)} >= {"confusion_matrix.csv",
                                                               "confusion_matrix.png"}
    csv = Path(client.download_artifacts(run_id, "confusion_matrix.csv", str(tmp_path)))
    assert csv.read_text().splitlines()[2] == '"a,b",0,3,0,0'
    start = time.monotonic()
    with tracked_run(tiny_config("seed=1"), uri, {}) as many:
        log_confusion_matrix(uri, many, np.eye(1000, dtype=int), tuple(map(str, range(1000))))
    assert time.monotonic() - start < 30
    assert [f.path for f in client.list_artifacts(many)] == ["confusion_matrix.csv"]
    with tracked_run(tiny_config("seed=2"), uri, {}) as broken:  # 3 rows for 4 names
        log_confusion_matrix(uri, broken, np.eye(3, dtype=int), names)
    run = client.get_run(broken)
    assert run.info.status == "FINISHED" and "ValueError" in run.data.tags["artifact_error"]


SECRET_URI = "postgresql://tl:s3cr3t-pw@db.example:5432/mlflow"


def test_redact_hides_passwords_alone_and_in_text():
    assert redact(SECRET_URI) == "postgresql://tl:***@db.example:5432/mlflow"
    assert redact(f"python -m tlbench tracking.uri={SECRET_URI} seed=1") == (
        "python -m tlbench tracking.uri=postgresql://tl:***@db.example:5432/mlflow seed=1")
    assert redact("http://127.0.0.1:5000 and sqlite:////x/y.db") == \
        "http://127.0.0.1:5000 and sqlite:////x/y.db"


def test_password_uri_is_redacted_in_tags_artifacts_and_errors(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = f"python -m tlbench tracking.uri={SECRET_URI}"
    with pytest.raises(RuntimeError), tracked_run(tiny_config(), uri, {"command": command}) as r:
        log_result(uri, r, {"test_accuracy": 0.5}, [], {"config.yaml": f"uri: {SECRET_URI}\n"})
        raise RuntimeError(f"cannot connect to {SECRET_URI}")
    client = MlflowClient(uri)
    run = client.get_run(r)
    config = Path(client.download_artifacts(r, "config.yaml", str(tmp_path))).read_text()
    texts = [*run.data.tags.values(), *run.data.params.values(), config]
    assert not [text for text in texts if "s3cr3t" in text]
    assert "tl:***@db.example" in run.data.tags["command"] and "tl:***@" in config


def test_server_warns_when_exposed():
    assert exposure_warning("127.0.0.1") is None
    assert "no authentication" in exposure_warning("0.0.0.0")


@pytest.mark.parametrize(("option", "message"), [
    (["--port", "99999"], "argument --port: '99999' is not a whole number from 1 to 65535"),
    (["--workers", "0"], "argument --workers: '0' is not a whole number of 1 or more"),
])
def test_server_refuses_an_out_of_range_option_before_starting_mlflow(tmp_path, option,
                                                                      message):
    """A port past 65535 reached MLflow's server, which failed to bind after 6 s."""
    done = subprocess.run([sys.executable, "-m", "tlbench", "server", *option], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"tlbench server: error: {message}"
    assert not (tmp_path / "mlflow-server.log").exists()


@pytest.mark.skipif(not os.environ.get("TLBENCH_TEST_POSTGRES_URI"),
                    reason="needs TLBENCH_TEST_POSTGRES_URI (.ci/run starts PostgreSQL)")
def test_server_output_never_prints_the_password(tmp_path):
    backend = os.environ["TLBENCH_TEST_POSTGRES_URI"]  # postgresql://user:password@host/db
    password = backend.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tlbench", "server", "--backend-store-uri", backend, "--port",
         str(port), "--log-file", str(tmp_path / "server.log"), "--artifacts",
         str(tmp_path / "artifacts")], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert ready.startswith("MLflow tracking server ready") and ":***@" in ready
    assert f":{password}@" not in ready


def test_a_server_on_an_unreachable_database_stops_in_seconds(tmp_path):
    """`tlbench server` on a database store with nothing on its port is one line in seconds
    naming --backend-store-uri, password hidden (the MLflow server retried it for a minute)."""
    from .test_sweep import free_port

    backend = f"postgresql://tl:s3cr3t@127.0.0.1:{free_port()}/runs"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", "server", "--backend-store-uri", backend, "--port",
         str(free_port()), "--log-file", str(tmp_path / "server.log"), "--artifacts",
         str(tmp_path / "artifacts")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and time.monotonic() - start < 30
    assert result.stderr.strip().splitlines()[-1].startswith(
        "tlbench server: error: --backend-store-uri=postgresql://tl:***@127.0.0.1:")
    assert "database unreachable" in result.stderr and "Traceback" not in result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


def test_sigterm_stops_the_server_with_its_mlflow_server(tmp_path):
    """A `kill` (SIGTERM) of `tlbench server` stops the MLflow server it started: its port is
    free again (before, the MLflow server outlived it, orphaned, holding the port)."""
    import urllib.request

    from .test_sweep import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tlbench", "server", "--port", str(port), "--backend-store-uri",
         f"sqlite:///{tmp_path}/server.db", "--log-file", str(tmp_path / "server.log"),
         "--artifacts", str(tmp_path / "artifacts")], cwd=tmp_path, stdout=subprocess.PIPE,
        text=True)
    try:
        assert process.stdout.readline().startswith("MLflow tracking server ready")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM and "server stopped" in output
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_unreachable_server_error_hides_the_password():
    from tlbench.errors import TlbenchError
    from tlbench.tracking.store import check_tracking_store

    with pytest.raises(TlbenchError) as err:
        check_tracking_store("http://tl:s3cr3t-pw@127.0.0.1:9")
    assert "s3cr3t" not in str(err.value) and "tl:***@127.0.0.1:9" in str(err.value)


def test_a_tracking_server_restarted_mid_sweep_loses_and_duplicates_nothing(tmp_path):
    """The server stops once the second job's run has started and comes back on the same port
    and store: that job's MLflow calls retry, a job starting meanwhile waits, nothing fails; a
    rerun skips everything, and the store holds one FINISHED run per configuration, whole."""
    import urllib.request

    from tlbench.tracking.server import serve

    from .test_cli import runs_of, tlbench
    from .test_sweep import free_port, wait_for

    backend, port, log_file = f"sqlite:///{tmp_path}/server.db", free_port(), tmp_path / "log"
    args = ["-m", "backbone=pixels", "data.train_size=2,3,4", "trainer.epochs=1",
            "trainer.patience=null", f"tracking.uri=http://127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    sweep = None
    try:
        with serve(backend, tmp_path / "artifacts", port, log_file) as uri, \
                open(tmp_path / "sweep.log", "w") as output:  # the child keeps its own copy
            sweep = subprocess.Popen([sys.executable, "-m", "tlbench", *args], cwd=tmp_path,
                                     env=env, stdout=output, stderr=subprocess.STDOUT)
            wait_for(lambda: second_job_started(runs_of(uri)), 120, 0.2)
            os.kill(sweep.pid, signal.SIGSTOP)  # held while the server stops, however fast
            assert [r.info.status for r in runs_of(uri)].count("FINISHED") < 3
        with pytest.raises(OSError):  # down, with the sweep's next jobs still to log
            urllib.request.urlopen(f"{uri}/health", timeout=2)
        os.kill(sweep.pid, signal.SIGCONT)
        time.sleep(3)
        with serve(backend, tmp_path / "artifacts", port, log_file):
            sweep.wait(timeout=300)
            rerun = tlbench(*args, cwd=tmp_path)
            runs = runs_of(uri)
            client = MlflowClient(uri)
            epochs = {r.info.run_id: client.get_metric_history(r.info.run_id, "epoch_loss")
                      for r in runs}
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    output = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode == 0, output[-3000:]
    assert "3 done, 0 skipped (already FINISHED), 0 failed" in output, output[-3000:]
    assert rerun.returncode == 0 and "0 done, 3 skipped" in rerun.stdout, rerun.stdout[-2000:]
    assert len(runs) == len({r.data.tags["config_hash"] for r in runs}) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert {"test_accuracy", "val_accuracy", "fit_seconds"} <= run.data.metrics.keys()
        assert len(epochs[run.info.run_id]) == 1  # one epoch logged once: no retried doubles


def second_job_started(runs) -> bool:
    """One run FINISHED and the next RUNNING (or, if that was missed, two FINISHED)."""
    statuses = [run.info.status for run in runs]
    return statuses.count("FINISHED") >= 2 or {"FINISHED", "RUNNING"} <= set(statuses)


RETRIED_CALL = """
import random, sys
import tlbench.__main__
from mlflow.tracking import MlflowClient
random.seed(0)
before = random.getstate()
try:
    MlflowClient(sys.argv[1]).get_experiment_by_name("tlbench")
except Exception:
    pass
print(random.getstate() == before)
"""


def test_retried_tracking_calls_leave_the_seeded_random_state_alone():
    """Keras' default seeds come from Python's `random`; MLflow's retry jitter must not draw
    from it, or a job whose calls were retried through an outage trains other weights."""
    from .test_sweep import free_port

    env = os.environ | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
    env.pop("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", None)
    out = subprocess.run([sys.executable, "-c", RETRIED_CALL, f"http://127.0.0.1:{free_port()}"],
                         env=env, text=True, capture_output=True, timeout=120)
    assert out.stdout.split()[-1] == "True", out.stderr[-2000:]
