"""Track stage: MLflow store checks, experiment creation, and one run's params, metrics and tags.

A run that raises ends FAILED with the error's last line in the `error` tag, never RUNNING.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from tlbench import __version__, runtime
from tlbench.config import RunConfig
from tlbench.errors import last_line
from tlbench.tracking.confusion import confusion_image
from tlbench.tracking.identity import config_hash, flatten, identity
from tlbench.tracking.store import ensure_experiment, experiment_id, redact, sweep_parent_id
from tlbench.tracking.termination import Terminated, terminate_as_exception

if TYPE_CHECKING:
    from tlbench.prepare import Prepared
    from tlbench.pretrain import Checkpoint

HEARTBEAT_SECONDS = 30  # a RUNNING run refreshes its `heartbeat` tag this often
STALE_SECONDS = 10 * HEARTBEAT_SECONDS  # ... and is taken for dead after this long without one
MAX_FIGURE_CLASSES = 60  # above this, the confusion matrix is logged as CSV only
NOTE = "mlflow.note.content"  # the run's description in MLflow's UI
NOTED_RUNS: set[str] = set()
"""Runs of this process whose finished note `log_result` has logged (tracked_run then skips it)."""
PENDING: dict[str, tuple[dict[str, str], dict[str, float]]] = {}
"""Tags and metrics `log_prepared` found for a run of this process, sent with the run's next
batch: its results (`log_result`), its error, or its end (tracked_run)."""
log = logging.getLogger("tlbench")


@functools.cache
def _git_commit() -> str:
    """The source checkout's commit, or 'unknown' for an installed package; asked once per
    process (the code it runs was imported at its start)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags(precision: str) -> dict[str, str]:
    """Versions and machine facts that make a result interpretable later (backend, accelerator
    and precision from tlbench.runtime)."""

    return {
        "tlbench_version": __version__,
        "git_commit": _git_commit(),
        "mlflow_version": mlflow.__version__,
        "host": platform.node(),
        "cpu_count": str(os.cpu_count()),
    } | runtime.environment_tags(precision)


def _runs_of_config(client: MlflowClient, experiment_id: str, digest: str, status: str):
    """Runs in the experiment with this config_hash tag and the given status."""
    query = f"tags.config_hash = '{digest}' and attributes.status = '{status}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=100)


def finished_run(uri: str, config: RunConfig, digest: str | None = None):
    """A FINISHED run of this config (config_hash `digest`, computed if not given), or None."""
    client = MlflowClient(uri)
    experiment = experiment_id(client, config.tracking.experiment)
    if experiment is None:
        return None
    digest = digest or config_hash(config)
    runs = _runs_of_config(client, experiment, digest, "FINISHED")
    return runs[0] if runs else None


def kill_stale_runs(client: MlflowClient, experiment_id: str, digest: str) -> list[str]:
    """Mark RUNNING runs with this config_hash KILLED when they are dead: no heartbeat for
    STALE_SECONDS (on any host), or their process is gone (known at once on this host)."""
    now = time.time()
    stale = [run for run in _runs_of_config(client, experiment_id, digest, "RUNNING")
             if is_stale(run, now)]
    for run in stale:
        client.set_tag(run.info.run_id, "error", "stale: no heartbeat or its process died")
        client.set_tag(run.info.run_id, NOTE, "KILLED: stale, no heartbeat or its process died")
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in stale]


def is_stale(run, now: float) -> bool:
    """Whether a RUNNING run is dead: its heartbeat (else its start) is older than STALE_SECONDS,
    or it ran on this host and its process no longer exists."""
    tags = run.data.tags
    beat = float(tags["heartbeat"]) if _is_number(tags.get("heartbeat")) else \
        run.info.start_time / 1000
    if now - beat > STALE_SECONDS:
        return True
    return tags.get("host") == platform.node() and not _process_alive(tags.get("pid", ""))


def _is_number(text: str | None) -> bool:
    """Whether a tag value parses as a float."""
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _process_alive(pid: str) -> bool:
    """Whether a process with this id exists on this host."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def heartbeat(uri: str, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Refresh the run's `heartbeat` tag (epoch seconds) from a daemon thread while the block
    runs; a failed refresh is logged, never raised."""
    client, stop = MlflowClient(uri), threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                client.set_tag(run_id, "heartbeat", f"{time.time():.0f}")
            except Exception as exc:  # noqa: BLE001 - the run goes on; staleness is judged later
                log.warning("heartbeat of run %s not recorded: %s", run_id, last_line(exc))

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def tracked_run(config: RunConfig, uri: str, tags: dict[str, str], digest: str | None = None,
                values: dict | None = None, run_name: str | None = None) -> Iterator[str]:
    """Start an MLflow run with the config as params, beating its heartbeat while it runs; on
    exception end it FAILED (KILLED for SIGINT/SIGTERM), error tagged; its description
    (`mlflow.note.content`) says how it ended. Tag values are redacted of passwords. A job of
    a multirun becomes a child of its sweep's RUNNING parent run (found by its `sweep_id` tag).

    `digest` is the run's config_hash (computed if not given); `values` replaces
    identity(config) as the params (score runs log another identity than trained runs, so that
    neither is resumed as the other)."""
    values = identity(config) if values is None else values
    digest = digest or config_hash(config, values)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, config.tracking.experiment)
    for run_id in kill_stale_runs(client, experiment_id, digest):
        log.warning("marked stale RUNNING run %s of this config KILLED", run_id)
    parent = sweep_parent_id(client, experiment_id, tags.get("sweep_id"), status="RUNNING")
    tags = tags | ({MLFLOW_PARENT_RUN_ID: parent} if parent else {})  # the UI groups the sweep
    run = client.create_run(experiment_id, run_name=run_name or config.tracking.run_name,
                            tags={k: redact(v) for k, v in tags.items()} | {
                                "config_hash": digest, "pid": str(os.getpid()),
                                "host": platform.node(), "heartbeat": f"{time.time():.0f}"})
    run_id = run.info.run_id
    try:
        with terminate_as_exception(), heartbeat(uri, run_id):
            client.log_batch(run_id, params=[
                mlflow.entities.Param(k, v) for k, v in flatten(values).items()
            ])
            yield run_id
    except BaseException as exc:
        NOTED_RUNS.discard(run_id)
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        error = _error_tag(exc)
        _log_batch(client, run_id, getattr(exc, "metrics", {}),
                   {"error": error, NOTE: f"{status}: {error}"})
        client.set_terminated(run_id, status)
        raise
    if run_id not in NOTED_RUNS:
        _log_batch(client, run_id, {}, {NOTE: finished_note(client.get_run(run_id).data.metrics)})
    NOTED_RUNS.discard(run_id)
    client.set_terminated(run_id, "FINISHED")


def finished_note(metrics: dict[str, float]) -> str:
    """The one-line description of a FINISHED run: its test accuracy when it has one."""
    if "test_accuracy" in metrics:
        return f"FINISHED: test accuracy {metrics['test_accuracy']:.4f}"
    return "FINISHED"


def _metrics(values: dict[str, float]) -> list:
    """MLflow metric entities, timestamped now, step 0."""
    now = mlflow.utils.time.get_current_time_millis()
    return [mlflow.entities.Metric(k, float(v), now, 0) for k, v in values.items()]


def _error_tag(exc: BaseException) -> str:
    """The exception's type and last message line, for the run's `error` tag."""
    if isinstance(exc, Terminated):
        return f"Terminated: signal {signal.Signals(exc.code - 128).name}"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt: interrupted (SIGINT)"
    return redact(f"{type(exc).__name__}: {last_line(exc)}")[:5000]


def log_result(uri: str, run_id: str, metrics: dict[str, float], history: list[dict],
               artifacts: dict[str, str]) -> None:
    """Final metrics, per-epoch step metrics and text artifacts, in as few requests as possible;
    with them the run's pending facts (`log_prepared`) and the description it gets if it
    finishes (`finished_note`), so that ending it needs no more requests (a failure after this
    still replaces it)."""
    client = MlflowClient(uri)
    now = mlflow.utils.time.get_current_time_millis()
    steps = [mlflow.entities.Metric(f"epoch_{k}", float(v), now, step)
             for step, epoch in enumerate(history) for k, v in epoch.items() if k != "phase"]
    _log_batch(client, run_id, metrics, {NOTE: finished_note(metrics)}, steps)
    NOTED_RUNS.add(run_id)
    for name, text in artifacts.items():
        client.log_text(run_id, redact(text), name)


def _log_batch(client: MlflowClient, run_id: str, metrics: dict[str, float],
               tags: dict[str, str], steps: Sequence = ()) -> None:
    """Step-0 metrics, per-step metrics and tags (redacted) with the run's pending facts, which
    they replace where keys are shared, in one log_batch (MLflow's client splits it where a
    request would hold too many)."""
    pending_tags, pending_metrics = PENDING.pop(run_id, ({}, {}))
    client.log_batch(run_id, metrics=_metrics(pending_metrics | metrics) + list(steps),
                     tags=[mlflow.entities.RunTag(k, redact(v))
                           for k, v in (pending_tags | tags).items()])


def log_prepared(uri: str, run_id: str, prepared: Prepared) -> None:
    """What the prepare stage found: the dataset (an MLflow input) and a source checkpoint's
    manifest now; the class names and the initial weights' facts as tags and metrics pending
    until the run's next batch (its results or its error: one request fewer a run)."""
    source, splits = prepared.source, prepared.splits
    tags, metrics = weights_facts(prepared.weights_sha256, prepared.checkpoint)
    tags["class_names"] = ", ".join(source.class_names)[:5000]
    if prepared.source_overlap is not None:
        metrics["source_overlap"] = prepared.source_overlap
    log_dataset_input(uri, run_id, prepared.config.data.name, source.fingerprint(), {
        "train": len(splits.train), "val": len(splits.val), "test": len(splits.test)})
    if prepared.checkpoint is not None:
        MlflowClient(uri).log_text(run_id, json.dumps(prepared.checkpoint.manifest, indent=2,
                                                      sort_keys=True) + "\n",
                                   "source_manifest.json")
    PENDING[run_id] = (tags, metrics)


def weights_facts(sha256: str | None,
                  checkpoint: Checkpoint | None) -> tuple[dict[str, str], dict[str, float]]:
    """The tags and metrics that describe the initial weights: checksum; for a source checkpoint
    its cost, cache hit, folder and validation accuracy."""
    tags = {"weights.sha256": sha256} if sha256 else {}
    metrics = {"pretrain_seconds": checkpoint.pretrain_seconds if checkpoint else 0.0}
    if checkpoint is not None:
        tags |= {"pretrain.cache_hit": str(checkpoint.cache_hit).lower(),
                 "pretrain.checkpoint": str(checkpoint.weights_path.parent)}
        metrics["source_val_accuracy"] = checkpoint.manifest["source_val_accuracy"]
    return tags, metrics


def log_dataset_input(uri: str, run_id: str, name: str, digest: str,
                      sizes: dict[str, int]) -> None:
    """The run's data as an MLflow dataset input (the UI's Dataset column): its name, content
    digest and split sizes (e.g. {"train": 626, "val": 90, "test": 180}) as the profile."""
    dataset = mlflow.entities.Dataset(
        name=name, digest=digest[:36], source_type="tlbench",
        source=json.dumps({"data": name}), profile=json.dumps(
            {"num_rows": sum(sizes.values()), "splits": sizes}, sort_keys=True))
    inputs = [mlflow.entities.DatasetInput(
        dataset, [mlflow.entities.InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
    try:
        MlflowClient(uri).log_inputs(run_id, inputs)
    except MlflowException:  # two workers inserted the same dataset at once: it exists now
        MlflowClient(uri).log_inputs(run_id, inputs)


def log_confusion_matrix(uri: str, run_id: str, confusion, class_names: tuple[str, ...]) -> None:
    """The test confusion matrix as CSV and, up to MAX_FIGURE_CLASSES classes, as a labelled PNG
    heatmap. Artifacts come after training: a failure here is a warning (and an `artifact_error`
    tag), never a failed run."""
    client = MlflowClient(uri)
    try:
        header = "true\\predicted," + ",".join(_csv_cell(name) for name in class_names)
        rows = [f"{_csv_cell(name)}," + ",".join(str(int(v)) for v in row)
                for name, row in zip(class_names, confusion, strict=True)]
        client.log_text(run_id, "\n".join([header, *rows]) + "\n", "confusion_matrix.csv")
        if len(class_names) <= MAX_FIGURE_CLASSES:
            client.log_image(run_id, confusion_image(confusion, class_names),
                             "confusion_matrix.png")
        else:
            log.info("confusion matrix of %d classes logged as CSV only (figure above %d)",
                     len(class_names), MAX_FIGURE_CLASSES)
    except Exception as exc:  # noqa: BLE001 - the run has finished; its artifacts are extras
        log.warning("confusion matrix not logged: %s", last_line(exc))
        client.set_tag(run_id, "artifact_error", _error_tag(exc))


def _csv_cell(text: str) -> str:
    """A CSV cell: quoted when it holds a comma, quote or line break."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text
