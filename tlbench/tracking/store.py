"""The tracking store: where runs go, checked in seconds before any work, and the experiment.

Also `redact`, which keeps passwords in tracking URIs out of everything tlbench writes or prints.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlbench.errors import TlbenchError

HTTP_CHECK_SECONDS = 5
DATABASES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # MLflow's stores, default ports
OUTAGE_SECONDS = 120  # a sweep's job waits this long for its tracking server (a restart)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # UI opens on the runs
KIND_TAG, SWEEP_KIND = "tlbench.kind", "sweep"  # the parent run of a multirun
OPENED_STORES: set[str] = set()
"""The sqlite URIs this process has opened as MLflow stores (MLflow keeps one engine per URI)
and the database URIs it has logged in to."""
EXPERIMENT_IDS: dict[tuple[str, str], str] = {}
"""Experiment ids by tracking URI and name, as found in this process."""
OPEN_PARENTS: dict[tuple[str, str, str], str] = {}
"""The RUNNING parent run of each sweep this process launched, by tracking URI, experiment id
and sweep id (set when it is opened, removed when it ends)."""
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s]*):[^@/\s]*@")
log = logging.getLogger("tlbench")


def redact(text: str) -> str:
    """`scheme://user:***@host`: any password in a URI, alone or inside a longer text."""
    return _USERINFO.sub(r"\g<head>:***@", text)


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else an absolute sqlite file in the working dir."""
    if uri:
        return uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_store(uri: str, wait: float = 0.0) -> None:
    """Fail in seconds, before any training, if the store cannot be written or reached (a new
    sqlite store gets its tables here, one process at a time; a sqlite store is opened once per
    process); a tracking server or database that does not answer is given `wait` seconds more (a
    sweep's job waits out a restart)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        _check_sqlite_location(path, uri)
        if uri not in OPENED_STORES:
            _create_sqlite_schema_once(path, uri)
    elif uri.startswith(("http://", "https://")):
        _wait_for(uri, wait, _server_answers, "tracking server unreachable",
                  "start it (mlflow server --host 127.0.0.1) or pass another tracking.uri")
    elif is_database(uri):
        check_database(uri, wait)


def is_database(uri: str) -> bool:
    """Whether the URI names a database store (postgresql, mysql, mssql, any driver)."""
    return uri.split(":", 1)[0].split("+", 1)[0] in DATABASES


def check_database(uri: str, wait: float = 0.0, key: str = "tracking.uri") -> None:
    """The database's port must answer in seconds (plus `wait`, as for a server), and its login
    succeed once per process: a refusal (user, password, database name, a missing driver) is
    one line naming `key`, where MLflow retries it for about 100 s before its traceback."""
    _wait_for(uri, wait, _database_port_answers, "database unreachable",
              f"start it or pass another {key}", key)
    if uri not in OPENED_STORES:
        _check_database_login(uri, key)


def _check_sqlite_location(path: Path, uri: str) -> None:
    """The sqlite file's folder must exist (or be creatable) and accept writes."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise TlbenchError(
            f"tracking.uri={redact(uri)}: cannot write to {folder} ({exc.strerror}); pass "
            "tracking.uri=sqlite:////a/writable/dir/mlflow.db or set MLFLOW_TRACKING_URI."
        ) from None


def _create_sqlite_schema_once(path: Path, uri: str) -> None:
    """Open the store under a lock on its folder: MLflow's schema migrations race when two
    processes open a new sqlite file together, and can leave it unusable."""
    from sqlalchemy.exc import SQLAlchemyError

    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        MlflowClient(uri).search_experiments(max_results=1)
        OPENED_STORES.add(uri)
    except (MlflowException, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise TlbenchError(
            f"tracking.uri={redact(uri)}: {path} is not a usable MLflow store ({reason}); move it "
            "aside or pass tracking.uri=sqlite:////another/mlflow.db.") from None
    finally:
        os.close(folder)  # releases the lock


def _wait_for(uri: str, wait: float, problem: Callable[[str], str | None], what: str,
              fix: str, key: str = "tracking.uri") -> None:
    """Return once `problem(uri)` finds none; raise its reason in one line when it still finds
    one after `wait` seconds (polled every 2 s after one warning line)."""
    deadline = time.monotonic() + wait
    while (reason := problem(uri)) is not None:
        if time.monotonic() >= deadline:
            raise TlbenchError(f"{key}={redact(uri)}: {what} ({redact(reason)}); {fix}.")
        if wait:
            log.warning("%s: %s (%s); waiting up to %.0f s for it", redact(uri), what,
                        redact(reason), deadline - time.monotonic())
            wait = 0.0  # warn once
        time.sleep(2)


def _server_answers(uri: str) -> str | None:
    """None when the HTTP tracking server answers its health check within HTTP_CHECK_SECONDS,
    else why not."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HTTP_CHECK_SECONDS):
            return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _database_port_answers(uri: str) -> str | None:
    """None when the database's port accepts a connection within HTTP_CHECK_SECONDS (or it is
    reached by a local socket), else why not."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
        if url.host:
            port = url.port or DATABASES[url.get_backend_name()]
            socket.create_connection((url.host, port), timeout=HTTP_CHECK_SECONDS).close()
    except (OSError, ValueError, sqlalchemy.exc.ArgumentError) as exc:
        return str(exc)
    return None


def _check_database_login(uri: str, key: str) -> None:
    """Log in to the database, or raise why not in one line."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        reason = redact(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
        raise TlbenchError(
            f"{key}={redact(uri)}: the database refused the connection ({reason}); check the "
            f"URI's user, password, database name and driver, or pass another {key}.") from None
    OPENED_STORES.add(uri)


def experiment_id(client: MlflowClient, name: str) -> str | None:
    """The id of the experiment of this name, or None while there is none; once found, it is
    remembered for the process (a sweep's runs looked it up twice each, 2 ms a request)."""
    key = (client.tracking_uri, name)
    if key not in EXPERIMENT_IDS:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return None
        EXPERIMENT_IDS[key] = experiment.experiment_id
    return EXPERIMENT_IDS[key]


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it once even when several workers start together; tagged
    as model training, so MLflow's UI opens it on the runs table (not the GenAI overview)."""
    found = experiment_id(client, name)
    if found is not None:
        return found
    try:
        created = client.create_experiment(name, tags=EXPERIMENT_KIND)
    except MlflowException:
        found = experiment_id(client, name)  # another worker created it first
        if found is None:
            raise
        return found
    EXPERIMENT_IDS[(client.tracking_uri, name)] = created
    return created


def sweep_parent_id(client, experiment_id: str, sweep_id: str | None,
                    status: str | None = None) -> str | None:
    """The run id of the sweep's parent run (the oldest, should two launchers race), optionally
    only while it has this status; None when there is none or `sweep_id` is None. A parent this
    process opened (`OPEN_PARENTS`) is known without a search."""
    if not sweep_id or "'" in sweep_id:
        return None
    opened = OPEN_PARENTS.get((client.tracking_uri, experiment_id, sweep_id))
    if opened is not None and status in (None, "RUNNING"):
        return opened
    query = f"tags.sweep_id = '{sweep_id}' and tags.`{KIND_TAG}` = '{SWEEP_KIND}'"
    if status:
        query += f" and attributes.status = '{status}'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None
