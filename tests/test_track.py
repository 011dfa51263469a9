"""MLflow tracking: URI resolution, fail-fast store checks, safe experiment creation, run status."""

from __future__ import annotations

import socket
import threading
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tlbench.errors import TlbenchError
from tlbench.track import (
    check_tracking_store,
    config_hash,
    ensure_experiment,
    flatten,
    resolve_tracking_uri,
    tracked_run,
)


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


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
