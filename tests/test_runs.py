"""MLflow tracking: URI resolution, fail-fast store checks, safe experiment creation, run status."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlbench.errors import TlbenchError
from tlbench.tracking.confusion import confusion_figure
from tlbench.tracking.identity import config_hash, flatten
from tlbench.tracking.runs import (
    log_confusion_matrix,
    log_dataset_input,
    log_prepared,
    log_result,
    tracked_run,
)
from tlbench.tracking.store import (
    check_tracking_store,
    ensure_experiment,
    experiment_id,
    resolve_tracking_uri,
)


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_unreachable_database_fails_in_seconds_without_its_password():
    """A database store with nothing listening on its port is one line in seconds, not MLflow's
    retries (about 100 s) and their traceback."""
    with socket.socket() as probe:  # a free port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(TlbenchError, match="database unreachable") as err:
        check_tracking_store(f"postgresql://tl:s3cr3t@127.0.0.1:{port}/runs")
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value) and "s3cr3t" not in str(err.value)
    assert f"tracking.uri=postgresql://tl:***@127.0.0.1:{port}/runs" in str(err.value)


@pytest.mark.skipif(not os.environ.get("TLBENCH_TEST_POSTGRES_URI"),
                    reason="needs TLBENCH_TEST_POSTGRES_URI (.ci/run starts PostgreSQL)")
def test_a_database_that_refuses_the_login_fails_in_seconds():
    """A running PostgreSQL without the URI's database is one line naming the reason, in
    seconds; the database itself passes."""
    uri = os.environ["TLBENCH_TEST_POSTGRES_URI"]  # postgresql://user:password@host/db
    check_tracking_store(uri)
    start = time.monotonic()
    with pytest.raises(TlbenchError, match='the database refused the connection .*"no_such_db" '
                                           'does not exist'):
        check_tracking_store(uri.rsplit("/", 1)[0] + "/no_such_db")
    assert time.monotonic() - start < 10


def test_unwritable_sqlite_location_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TlbenchError, match="cannot write to") as err:
        check_tracking_store(f"sqlite:///{blocker}/sub/mlflow.db")
    assert "\n" not in str(err.value)


def test_unreachable_server_fails_in_seconds():
    with socket.socket() as probe:  # a free port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(TlbenchError, match="tracking server unreachable"):
        check_tracking_store(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 10


OPEN_STORE = """
import sys
from tlbench.tracking.store import check_tracking_store, ensure_experiment
from mlflow.tracking import MlflowClient
check_tracking_store(sys.argv[1])
ensure_experiment(MlflowClient(sys.argv[1]), "shared")
"""


def test_processes_opening_a_new_sqlite_store_together_all_get_it_whole(tmp_path):
    """Without the lock, MLflow's migrations race ('table _alembic_tmp_metrics already exists')
    in most tries with two processes."""
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path}/store{attempt}.db"
        workers = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri],
                                    stderr=subprocess.PIPE, text=True) for _ in range(3)]
        errors = [worker.communicate(timeout=120)[1] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0, 0], errors
        assert MlflowClient(uri).get_experiment_by_name("shared") is not None


def test_experiment_created_once_by_concurrent_workers(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # create the schema once, as the first run would
    ids: list[str] = []
    workers = [threading.Thread(target=lambda: ids.append(
        ensure_experiment(MlflowClient(uri), "shared"))) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(ids) == 4 and len(set(ids)) == 1


def test_flatten_uses_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {
        "a.b": "1", "a.c.d": "null", "e": "x"}


def test_config_hash_ignores_tracking_only(tiny_config):
    base = tiny_config()
    assert config_hash(base) == config_hash(tiny_config("tracking.experiment=other"))
    assert config_hash(base) != config_hash(tiny_config("seed=1"))


def test_failed_run_ends_failed_with_error_tag(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config()
    with pytest.raises(ValueError), tracked_run(config, uri, {"sweep_id": "s1"}):
        raise ValueError("first line\nthe last line says why")
    (run,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("tlbench").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: the last line says why"
    assert run.data.tags["sweep_id"] == "s1"
    assert run.data.params["backbone.name"] == "mobilenetv2"
    assert "tracking.uri" not in run.data.params


def test_finished_run(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracked_run(tiny_config(), uri, {}) as run_id:
        pass
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_new_experiment_opens_on_the_runs_table(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment(ensure_experiment(client, "fresh"))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_input_fills_the_dataset_column(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracked_run(tiny_config(), uri, {}) as run_id:
        log_dataset_input(uri, run_id, "digits59", "ab" * 32, {"train": 5, "val": 2, "test": 3})
    (entry,) = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest) == ("digits59", "ab" * 18)
    assert json.loads(entry.dataset.profile) == {"num_rows": 10,
                                                 "splits": {"test": 3, "train": 5, "val": 2}}
    assert [(tag.key, tag.value) for tag in entry.tags] == [("mlflow.data.context", "training")]


def test_run_description_says_how_it_ended(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    with tracked_run(tiny_config(), uri, {}) as finished:
        client.log_metric(finished, "test_accuracy", 0.8125)
    with pytest.raises(ValueError), tracked_run(tiny_config("seed=1"), uri, {}) as failed:
        raise ValueError("bad things\nthe reason")
    assert client.get_run(finished).data.tags["mlflow.note.content"] == \
        "FINISHED: test accuracy 0.8125"
    assert client.get_run(failed).data.tags["mlflow.note.content"] == \
        "FAILED: ValueError: the reason"


def counted(monkeypatch, method: str) -> list[int]:
    """Count the calls of an MlflowClient method, which still does its work."""
    calls: list[int] = []
    original = getattr(MlflowClient, method)
    monkeypatch.setattr(MlflowClient, method, lambda self, *args, **kwargs: (
        calls.append(1), original(self, *args, **kwargs))[1])
    return calls


def test_a_run_that_logged_its_result_ends_with_no_more_reads(tmp_path, tiny_config,
                                                               monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    reads = counted(monkeypatch, "get_run")
    with tracked_run(tiny_config(), uri, {}) as finished:
        log_result(uri, finished, {"test_accuracy": 0.75}, [], {})
    assert not reads
    with pytest.raises(ValueError), tracked_run(tiny_config("seed=1"), uri, {}) as failed:
        log_result(uri, failed, {"test_accuracy": 0.5}, [], {})
        raise ValueError("after the result")
    notes = {run_id: client.get_run(run_id).data.tags["mlflow.note.content"]
             for run_id in (finished, failed)}
    assert notes == {finished: "FINISHED: test accuracy 0.7500",
                     failed: "FAILED: ValueError: after the result"}


def test_prepared_facts_come_with_the_result_the_error_or_the_end(tmp_path, tiny_config,
                                                                    monkeypatch):
    """The class names and initial weights' facts that log_prepared finds are sent with the
    run's results (no request of their own), with its error when it fails after preparing, or
    with its end when nothing else is logged."""
    from tlbench.prepare import prepare

    uri, config = f"sqlite:///{tmp_path}/mlflow.db", tiny_config()
    client, prepared = MlflowClient(uri), prepare(config, None, 1)
    batches = counted(monkeypatch, "log_batch")
    with tracked_run(config, uri, {}) as finished:
        log_prepared(uri, finished, prepared)
        log_result(uri, finished, {"test_accuracy": 0.75}, [], {})
    assert len(batches) == 2  # the params, then the facts with the results
    with pytest.raises(ValueError), tracked_run(tiny_config("seed=1"), uri, {}) as failed:
        log_prepared(uri, failed, prepared)
        raise ValueError("after preparing")
    with tracked_run(tiny_config("seed=2"), uri, {}) as ended:
        log_prepared(uri, ended, prepared)
    expected = ("FINISHED", "FINISHED: test accuracy 0.7500"), \
        ("FAILED", "FAILED: ValueError: after preparing"), ("FINISHED", "FINISHED")
    for run_id, (status, note) in zip((finished, failed, ended), expected, strict=True):
        run = client.get_run(run_id)
        assert (run.info.status, run.data.tags["mlflow.note.content"]) == (status, note)
        assert run.data.tags["class_names"] == ", ".join(prepared.source.class_names)
        assert run.data.metrics["pretrain_seconds"] == 0.0


def test_a_store_is_opened_once_per_process(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    opened = counted(monkeypatch, "search_experiments")
    check_tracking_store(uri)
    check_tracking_store(uri)
    assert len(opened) == 1 and (tmp_path / "mlflow.db").exists()


def test_an_experiment_is_looked_up_once_per_process(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lookups = counted(monkeypatch, "get_experiment_by_name")
    assert experiment_id(MlflowClient(uri), "once") is None  # not remembered while missing
    created = ensure_experiment(MlflowClient(uri), "once")
    assert ensure_experiment(MlflowClient(uri), "once") == created == \
        experiment_id(MlflowClient(uri), "once") == \
        MlflowClient(uri).get_experiment_by_name("once").experiment_id
    assert len(lookups) == 3  # missing, missing before creating it, then the check above


def test_keyboard_interrupt_ends_killed(tmp_path, tiny_config):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(KeyboardInterrupt), tracked_run(tiny_config(), uri, {}) as run_id:
        raise KeyboardInterrupt
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["heartbeat"].isdigit()


def test_the_logged_heatmap_has_the_pixels_savefig_writes(tmp_path, tiny_config):
    from PIL import Image

    uri, names = f"sqlite:///{tmp_path}/mlflow.db", ("five", "six", "seven")
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 3]])
    with tracked_run(tiny_config(), uri, {}) as run_id:
        log_confusion_matrix(uri, run_id, matrix, names)
    path = MlflowClient(uri).download_artifacts(run_id, "confusion_matrix.png", str(tmp_path))
    saved = io.BytesIO()
    confusion_figure(matrix, names).savefig(saved, format="png")
    logged, written = np.asarray(Image.open(path)), np.asarray(Image.open(saved))
    assert logged.shape == (400, 400, 3) and (written[..., 3] == 255).all()
    assert np.array_equal(logged, written[..., :3])
