"""`tlbench server`: a real MLflow tracking server on 127.0.0.1 for parallel workers and clusters.

Concurrent writers to one sqlite file race; workers should log over HTTP to one server instead. The
backend is sqlite by default, PostgreSQL when given a postgresql:// URI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tlbench.errors import TlbenchError, whole_number

START_TIMEOUT_SECONDS = 60
# MLflow's GenAI job runner (seven huey worker processes) is of no use to tlbench; without it the
# server stops in about 2 s instead of 10-19 s and starts in 10-31 s instead of 24-33 s (2 cores
# loaded by other jobs, 3-4 tries each). A user's own setting wins.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


RUNS_TABLE_QUERY = {
    "workflowType": "machine_learning",  # MLflow 3.17 opens experiments on a GenAI page otherwise
    "orderByKey": "metrics.`test_accuracy`",  # the runs table's sort, kept in the URL
    "orderByAsc": "false",
}
"""MLflow 3.17's runs page (#/experiments/<id>/runs) keeps its search filter and sort in the URL;
the experiment's root link redirects there keeping only the workflow, time range and workspace.
Its selected columns and grouping live in the browser's localStorage per experiment, so no link
can pick them."""


def runs_table_url(address: str, experiment_id: str, sweep_id: str | None = None) -> str:
    """The MLflow UI link that opens an experiment on its runs table, best test_accuracy first;
    with `sweep_id`, filtered to that sweep's runs."""
    query = RUNS_TABLE_QUERY | ({"searchFilter": f"tags.sweep_id = '{sweep_id}'"} if sweep_id
                                else {})
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return f"{address}/#/experiments/{experiment_id}/runs?{encoded}"  # the root drops sort, filter


def server_command(host: str, port: int, backend: str, artifacts: Path, workers: int) -> list[str]:
    """The `mlflow server` command line, bound to host, proxying artifacts to a local folder."""
    mlflow = shutil.which("mlflow")
    launcher = [mlflow] if mlflow else [sys.executable, "-m", "mlflow"]
    return [*launcher, "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
            "--workers", str(workers)]


def _last_error_line(log_file: Path) -> str:
    """The last ERROR line (else the last line) the server wrote to its log."""
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return (errors or lines or ["no output"])[-1].strip()


def wait_until_healthy(uri: str, process: subprocess.Popen, log_file: Path, timeout: float) -> None:
    """Poll /health until the server answers; fail with its last error line or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TlbenchError(f"mlflow server exited with code {process.returncode} before it "
                               f"was ready: {_last_error_line(log_file)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    process.terminate()
    raise TlbenchError(f"mlflow server at {uri} not ready after {timeout:.0f} s: "
                       f"{_last_error_line(log_file)}")


@contextlib.contextmanager
def serve(backend: str, artifacts: Path, port: int, log_file: Path, host: str = "127.0.0.1",
          workers: int = 1) -> Iterator[str]:
    """Run an MLflow server (output to log_file) for the duration of the block; yields its URI."""
    artifacts.mkdir(parents=True, exist_ok=True)
    uri = f"http://{host}:{port}"
    with open(log_file, "ab") as output:
        process = subprocess.Popen(server_command(host, port, backend, artifacts, workers),
                                   stdout=output, stderr=subprocess.STDOUT,
                                   env=SERVER_ENV | os.environ)
        try:
            wait_until_healthy(uri, process, log_file, START_TIMEOUT_SECONDS)
            yield uri
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options of `tlbench server`."""
    parser = argparse.ArgumentParser(
        prog="tlbench server",
        description="Start a real MLflow tracking server on 127.0.0.1 and print the tracking.uri "
                    "to pass to sweeps (parallel workers log to it over HTTP).")
    parser.add_argument("--port", type=whole_number(1, 65535), default=5000,
                        help="port to listen on (5000)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (127.0.0.1; use 0.0.0.0 for a cluster head node)")
    parser.add_argument("--backend-store-uri", default=None,
                        help="sqlite:///abs/path.db (default: sqlite:///<cwd>/mlflow.db) or "
                             "postgresql://user:pass@host:5432/db")
    parser.add_argument("--artifacts", type=Path, default=Path("mlartifacts"),
                        help="folder the server stores artifacts in (./mlartifacts)")
    parser.add_argument("--workers", type=whole_number(1), default=2,
                        help="server worker processes (2)")
    parser.add_argument("--log-file", type=Path, default=Path("mlflow-server.log"),
                        help="where the server's own output goes (./mlflow-server.log)")
    return parser.parse_args(argv)


def exposure_warning(host: str) -> str | None:
    """A warning when the server listens beyond this machine: MLflow's server has no login."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"warning: --host {host} exposes the MLflow server to the network with no "
            "authentication: anyone who reaches its port can read, change and delete runs. "
            "Bind 127.0.0.1 (and tunnel), or keep the port behind a firewall.")


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM or SIGHUP), then stop the MLflow server."""
    from tlbench.tracking.store import check_database, is_database, redact
    from tlbench.tracking.termination import Terminated, terminate_as_exception

    args = parse_args(argv)
    backend = args.backend_store_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        if is_database(backend):
            check_database(backend, key="--backend-store-uri")
        with terminate_as_exception(), serve(backend, args.artifacts.resolve(), args.port,
                                             args.log_file, args.host, args.workers) as uri:
            print(f"MLflow tracking server ready at {uri} (backend {redact(backend)})",
                  flush=True)
            print(f"  sweeps: python -m tlbench -m ... tracking.uri={uri}", flush=True)
            print(f"  UI:     open {runs_table_url(uri, '<id>')} in a browser (an "
                  "experiment's runs table, best test_accuracy first); Ctrl-C stops the server",
                  flush=True)
            while True:
                time.sleep(3600)
    except TlbenchError as exc:
        raise SystemExit(f"tlbench server: error: {redact(str(exc))}") from None
    except KeyboardInterrupt:
        print("server stopped", flush=True)
    except Terminated:  # a scheduler's or `kill`'s stop: the MLflow server is stopped first
        print("server stopped", flush=True)
        raise


if __name__ == "__main__":
    main()
