"""MLflow I/O for the report: find the experiment and sweep, page through its runs into a table.

Only MLflow's client API is used (never its files or database), so any tracking store works.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from tlbench.errors import TlbenchError
from tlbench.tracking.store import check_database, is_database, redact

PAGE_SIZE = 1000


def _first_line(error: Exception) -> str:
    """An exception's first message line, for one-line errors."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def local_store_path(uri: str) -> Path | None:
    """The file or folder behind a local tracking URI; None for servers and in-memory sqlite."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        return Path(path) if path and path != uri else None
    if scheme in ("", "file"):
        return Path(urlparse(uri).path if scheme else uri)
    return None


def connect(uri: str) -> MlflowClient:
    """A client for `uri`; a local store must already exist (MLflow would silently create one),
    a database answer in seconds (MLflow retries one for about 100 s)."""
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise TlbenchError(f"no MLflow tracking store at {path} (tracking URI {redact(uri)})")
    if is_database(uri):
        check_database(uri, key="--tracking-uri")
    with store_errors(f"cannot open tracking store {uri}"):
        return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Turn a tracking-store failure (MLflow, network or database) into a one-line TlbenchError."""
    try:
        yield
    except (MlflowException, SQLAlchemyError, OSError) as error:
        raise TlbenchError(redact(f"{action}: {_first_line(error)}")) from None


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment called `name`; the error lists the known names."""
    with store_errors(f"cannot read tracking store {client.tracking_uri}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments()))
            raise TlbenchError(f"no experiment named {name!r} (known: {known or 'none'})")
    return experiment.experiment_id


def latest_sweep_id(client: MlflowClient, experiment: str) -> str:
    """The sweep_id tag of the experiment's most recently started run that has one."""
    with store_errors("cannot search runs"):
        runs = client.search_runs([experiment], "tags.sweep_id != ''",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TlbenchError("the experiment has no run with a sweep_id tag")
    return runs[0].data.tags["sweep_id"]


def _quoted(value: str) -> str:
    """`value` as an MLflow filter-string literal."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TlbenchError(f"cannot filter on {value!r}: it contains both quote characters")


def sweep_filter(sweep_id: str, extra: str | None) -> str:
    """MLflow filter selecting the sweep's runs, ANDed with an optional user filter."""
    selector = f"tags.sweep_id = {_quoted(sweep_id)}"
    return f"{selector} and {extra}" if extra else selector


SCORE_FILTER = "tags.`tlbench.kind` = 'score'"
"""Score runs of `python -m tlbench rank`: no sweep_id, joined with a sweep's runs on params."""


def run_row(run: Run) -> dict:
    """One run as a flat record: info fields plus `params.*`, `metrics.*` and `tags.*` columns."""
    info, data = run.info, run.data
    return {
        "run_id": info.run_id, "run_name": info.run_name, "status": info.status,
        "start_time": info.start_time, "end_time": info.end_time,
        **{f"params.{k}": v for k, v in data.params.items()},
        **{f"metrics.{k}": v for k, v in data.metrics.items()},
        **{f"tags.{k}": v for k, v in data.tags.items()},
    }


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause cyclic GC: SQLAlchemy builds ~50 objects per run and GC passes triple fetch time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def fetch_runs(client: MlflowClient, experiment: str, filter_string: str,
               on_page: Callable[[int], None] = lambda count: None) -> pd.DataFrame:
    """All runs matching `filter_string`, page by page; `on_page` gets the running count."""
    rows: list[dict] = []
    token = None
    with store_errors(f"cannot search runs with filter {filter_string!r}"), _gc_paused():
        while True:
            page = client.search_runs([experiment], filter_string, max_results=PAGE_SIZE,
                                      page_token=token)
            rows.extend(run_row(run) for run in page)
            on_page(len(rows))
            token = page.token
            if not token:
                break
    return pd.DataFrame(rows)
