"""Track stage: MLflow store checks, experiment creation, and one run's params, metrics and tags.

A run that raises ends FAILED with the error's last line in the `error` tag, never RUNNING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlbench import __version__
from tlbench.config import RunConfig
from tlbench.errors import TlbenchError, last_line

if TYPE_CHECKING:
    from tlbench.prepare import Prepared
    from tlbench.pretrain import Checkpoint

HTTP_CHECK_SECONDS = 5
log = logging.getLogger("tlbench")


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else an absolute sqlite file in the working dir."""
    if uri:
        return uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_store(uri: str) -> None:
    """Fail in seconds, before any training, if the store cannot be written or reached."""
    if uri.startswith("sqlite:///"):
        _check_sqlite_location(Path(uri.removeprefix("sqlite:///")), uri)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)


def _check_sqlite_location(path: Path, uri: str) -> None:
    """The sqlite file's folder must exist (or be creatable) and accept writes."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise TlbenchError(
            f"tracking.uri={uri}: cannot write to {folder} ({exc.strerror}); pass "
            "tracking.uri=sqlite:////a/writable/dir/mlflow.db or set MLFLOW_TRACKING_URI."
        ) from None


def _check_server(uri: str) -> None:
    """An HTTP tracking server must answer its health check within a few seconds."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HTTP_CHECK_SECONDS):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TlbenchError(
            f"tracking.uri={uri}: tracking server unreachable ({reason}); start it "
            "(mlflow server --host 127.0.0.1) or pass another tracking.uri."
        ) from None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it once even when several workers start together."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def identity(config: RunConfig) -> dict:
    """The resolved config minus where things are stored: what makes two runs the same cell."""
    values = dataclasses.asdict(config)
    values.pop("tracking")
    values.pop("cache")
    values["pretrain"].pop("cache_dir")
    return values


def config_hash(config: RunConfig) -> str:
    """A stable short hash of the run's identity."""
    return values_hash(identity(config))


def values_hash(values: dict) -> str:
    """A stable short hash of an identity dict (a run's, or a score run's: see tlbench.rank)."""
    canonical = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict as dotted keys with string values, as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def _git_commit() -> str:
    """The source checkout's commit, or 'unknown' for an installed package."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    """Versions and machine facts that make a result interpretable later."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "tlbench_version": __version__,
        "git_commit": _git_commit(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_version": mlflow.__version__,
        "device": f"gpu x{len(gpus)}" if gpus else "cpu",
        "host": platform.node(),
        "cpu_count": str(os.cpu_count()),
    }


def _runs_of_config(client: MlflowClient, experiment_id: str, digest: str, status: str):
    """Runs in the experiment with this config_hash tag and the given status."""
    query = f"tags.config_hash = '{digest}' and attributes.status = '{status}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=100)


def finished_run(uri: str, config: RunConfig):
    """A FINISHED run of this exact config in the experiment, or None."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return None
    runs = _runs_of_config(client, experiment.experiment_id, config_hash(config), "FINISHED")
    return runs[0] if runs else None


def kill_stale_runs(client: MlflowClient, experiment_id: str, digest: str) -> list[str]:
    """Mark RUNNING runs with this config_hash KILLED unless their process is alive on this host."""
    stale = [run for run in _runs_of_config(client, experiment_id, digest, "RUNNING")
             if not _process_alive(run.data.tags)]
    for run in stale:
        client.set_tag(run.info.run_id, "error", "stale: its process died while RUNNING")
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in stale]


def _process_alive(tags: dict[str, str]) -> bool:
    """Whether the run's recorded process still exists (only knowable on the same host)."""
    if tags.get("host") != platform.node() or not tags.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(tags["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def tracked_run(config: RunConfig, uri: str, tags: dict[str, str],
                values: dict | None = None, run_name: str | None = None) -> Iterator[str]:
    """Start an MLflow run with the config as params; on exception end it FAILED, error tagged.

    `values` replaces identity(config) as the params and the config_hash (score runs log another
    identity than trained runs, so that neither is mistaken for the other on resume)."""
    values = identity(config) if values is None else values
    digest = values_hash(values)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, config.tracking.experiment)
    for run_id in kill_stale_runs(client, experiment_id, digest):
        log.warning("marked stale RUNNING run %s of this config KILLED", run_id)
    run = client.create_run(experiment_id, run_name=run_name or config.tracking.run_name,
                            tags=tags | {"config_hash": digest, "pid": str(os.getpid())})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[
            mlflow.entities.Param(k, v) for k, v in flatten(values).items()
        ])
        yield run_id
    except BaseException as exc:
        client.set_tag(run_id, "error", _error_tag(exc))
        client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _error_tag(exc: BaseException) -> str:
    """The exception's type and last message line, for the run's `error` tag."""
    return f"{type(exc).__name__}: {last_line(exc)}"[:5000]


def log_result(uri: str, run_id: str, metrics: dict[str, float], history: list[dict],
               artifacts: dict[str, str]) -> None:
    """Final metrics, per-epoch step metrics and text artifacts, in as few requests as possible."""
    client = MlflowClient(uri)
    now = mlflow.utils.time.get_current_time_millis()
    entries = [mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for step, epoch in enumerate(history):
        entries += [mlflow.entities.Metric(f"epoch_{k}", float(v), now, step)
                    for k, v in epoch.items() if k != "phase"]
    for start in range(0, len(entries), 1000):
        client.log_batch(run_id, metrics=entries[start:start + 1000])
    for name, text in artifacts.items():
        client.log_text(run_id, text, name)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Tags known only once the run has started (e.g. the source's class names)."""
    entries = [mlflow.entities.RunTag(key, value) for key, value in tags.items()]
    MlflowClient(uri).log_batch(run_id, tags=entries)


def log_prepared(uri: str, run_id: str, prepared: Prepared) -> None:
    """What the prepare stage found: the class names, the initial weights and their source."""
    set_tags(uri, run_id, {"class_names": ", ".join(prepared.source.class_names)[:5000]})
    log_weights(uri, run_id, prepared.weights_sha256, prepared.checkpoint)


def log_weights(uri: str, run_id: str, sha256: str | None, checkpoint: Checkpoint | None) -> None:
    """The initial weights' checksum; for a source checkpoint its manifest, cost and cache hit."""
    client = MlflowClient(uri)
    if sha256:
        client.set_tag(run_id, "weights.sha256", sha256)
    seconds = checkpoint.pretrain_seconds if checkpoint else 0.0
    client.log_metric(run_id, "pretrain_seconds", seconds)
    if checkpoint is not None:
        client.set_tag(run_id, "pretrain.cache_hit", str(checkpoint.cache_hit).lower())
        client.set_tag(run_id, "pretrain.checkpoint", str(checkpoint.weights_path.parent))
        client.log_metric(run_id, "source_val_accuracy", checkpoint.manifest["source_val_accuracy"])
        client.log_text(run_id, json.dumps(checkpoint.manifest, indent=2, sort_keys=True) + "\n",
                        "source_manifest.json")


def log_confusion_matrix(uri: str, run_id: str, confusion, class_names: tuple[str, ...]) -> None:
    """The test confusion matrix as CSV and as a labelled PNG heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header = "true\\predicted," + ",".join(class_names)
    rows = [f"{name}," + ",".join(str(int(v)) for v in row)
            for name, row in zip(class_names, confusion, strict=True)]
    client = MlflowClient(uri)
    client.log_text(run_id, "\n".join([header, *rows]) + "\n", "confusion_matrix.csv")
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true", title="Test confusion matrix")
    for (i, j), value in np.ndenumerate(confusion):
        ax.text(j, i, int(value), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    client.log_figure(run_id, fig, "confusion_matrix.png")
    plt.close(fig)
