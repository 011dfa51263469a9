"""What to do after a run or a sweep: the MLflow UI link to its runs and the report command."""

from __future__ import annotations

import shlex

from tlbench.tracking.server import runs_table_url

MLFLOW_UI_ADDRESS = "http://127.0.0.1:5000"
"""Where `mlflow ui` serves by default."""


def ui_command(uri: str, experiment_id: str, sweep_id: str) -> str:
    """Open the sweep's runs table: on the tracking server itself, or on `mlflow ui` started on
    the store."""
    from tlbench.tracking.store import redact

    if uri.startswith(("http://", "https://")):
        return f"open {runs_table_url(uri.rstrip('/'), experiment_id, sweep_id)}"
    link = runs_table_url(MLFLOW_UI_ADDRESS, experiment_id, sweep_id)
    return f"mlflow ui --backend-store-uri {redact(uri)}   # then open {link}"


def report_command(uri: str, experiment: str, sweep_id: str) -> str:
    """The report on this sweep, with --tracking-uri where the report would not find the store
    by itself."""
    from tlbench.tracking.store import redact, resolve_tracking_uri

    store = "" if uri == resolve_tracking_uri(None) else f" --tracking-uri {redact(uri)}"
    return (
        f"python -m tlbench report --experiment {shlex.quote(experiment)} "
        f"--sweep {shlex.quote(sweep_id)}{store}"
    )


def next_commands(uri: str, experiment: str, sweep_id: str) -> list[str]:
    """The closing lines of a run or a sweep: its runs in the MLflow UI, then its report."""
    from mlflow.tracking import MlflowClient

    from tlbench.tracking.store import experiment_id

    found = experiment_id(MlflowClient(uri), experiment)
    return [
        "next:",
        f"  {ui_command(uri, found, sweep_id)}",
        f"  {report_command(uri, experiment, sweep_id)}",
    ]
