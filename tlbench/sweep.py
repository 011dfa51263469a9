"""Sweep bookkeeping: ready grids from sweeps/, a stable sweep id, progress, ETA and the summary.

Each job appends one JSON line to `<sweep dir>/tlbench_jobs.jsonl`; progress lines and the final
summary are read from it, so they work with any launcher that shares the sweep folder. A launch
into a folder that has one (a fixed `hydra.sweep.dir`, run again) first appends a launch line:
only the jobs after the last one count.

A multirun is also a parent MLflow run (tags `sweep_id`, `tlbench.kind=sweep`), created by the
launching process before any job; each job's run names it in `mlflow.parentRunId`, so MLflow's UI
groups a sweep's runs under it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tlbench.errors import TlbenchError
from tlbench.progress import duration
from tlbench.tracking.next_steps import next_commands

log = logging.getLogger("tlbench")

JOBS_FILE = "tlbench_jobs.jsonl"
LAUNCH = '{"launch":'  # how a launch line starts
NOTE = "mlflow.note.content"  # a run's description in MLflow's UI
NOT_IDENTITY = ("tracking.", "dry_run", "trainer.verbose", "hydra.", "hydra/")


@functools.cache
def launch_tag() -> str:
    """`<pid>-<4 hex>`: this launching process's mark on its sweep folder, so two sweeps started
    in the same second (a script, a job array) never share `multirun/<date>/<HH-MM-SS>`."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


# conf/config.yaml's hydra.sweep.dir; cached like Hydra's `now`, so every job (and joblib's
# workers, which receive the launcher's resolved values) sees the launcher's tag.
OmegaConf.register_new_resolver("tlbench_launch", lambda: launch_tag(), use_cache=True,
                                replace=True)


def register_sweeps() -> None:
    """Offer every packaged sweeps/*.yaml as `+sweep=<name>` (a global-package config)."""
    store = ConfigStore.instance()
    for path in files("tlbench.sweeps").iterdir():
        if path.name.endswith(".yaml"):
            node = OmegaConf.create(path.read_text())
            store.store(group="sweep", name=path.name.removesuffix(".yaml"), node=node,
                        package="_global_")


@dataclass(frozen=True)
class SweepInfo:
    """Where this job sits: the sweep's id and folder, the job's index and the grid's size."""

    sweep_id: str
    folder: Path
    index: int
    total: int | None


def _sweep_overrides(hydra_cfg: DictConfig) -> list[str]:
    """The overrides that define the grid: the sweeper's params, then the command line's."""
    params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(hydra_cfg.overrides.task)


def grid_size(overrides: list[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of these overrides; None for range sweeps."""
    total = 1
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None
            total *= len(list(override.sweep_string_iterator()))
    return total


def sweep_id_of(overrides: list[str]) -> str:
    """A readable id that is the same whenever the same grid is run again (so resume joins it)."""
    identity = sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_IDENTITY))
    name = next((o.split("=", 1)[1] for o in identity if o.startswith(("+sweep=", "+suite="))),
                "sweep")
    digest = hashlib.sha1("\n".join(identity).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def multirun_sweep_id(overrides: list[str], folder: Path) -> str:
    """A multirun's id: from its grid's overrides, else from its folder's name."""
    return sweep_id_of(overrides) if overrides else f"sweep-{folder.name}"


def current_sweep() -> SweepInfo:
    """This job's sweep, read from the multirun.yaml Hydra writes into the sweep folder."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        overrides = list(hc.overrides.task)
        return SweepInfo(sweep_id_of(overrides), Path(hc.runtime.output_dir), 0, 1)
    folder = Path(hc.sweep.dir).resolve()
    saved = folder / "multirun.yaml"
    stamp = saved.stat().st_mtime_ns if saved.is_file() else None
    sweep_id, total = saved_sweep(folder, stamp)
    return SweepInfo(sweep_id, folder, hc.job.num, total)


@functools.lru_cache(maxsize=4)
def saved_sweep(folder: Path, stamp: int | None) -> tuple[str, int | None]:
    """The sweep id and job count of the multirun.yaml in `folder` (as last modified at
    `stamp`), read once per process, not once per job."""
    overrides = _sweep_overrides(OmegaConf.load(folder / "multirun.yaml").hydra) \
        if stamp is not None else []
    return multirun_sweep_id(overrides, folder), grid_size(overrides) if overrides else None


def worker_threads() -> int | None:
    """Each parallel worker's share of the cores (joblib's n_jobs); None when sequential."""
    n_jobs = OmegaConf.select(HydraConfig.get().launcher, "n_jobs")
    cores = os.cpu_count() or 1
    if not n_jobs or n_jobs == 1:
        return None
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


def progress_prefix(sweep: SweepInfo) -> str:
    """`[7/48]` for a job of a sweep, empty for a single run."""
    return f"[{sweep.index + 1}/{sweep.total or '?'}] " if sweep.total != 1 else ""


def record_job(sweep: SweepInfo, name: str, status: str, seconds: float, **extra) -> None:
    """Append this job's outcome to the sweep's jobs file (one write, so concurrent workers'
    lines do not interleave); a failed append is a warning, never a failed job."""
    line = json.dumps({"name": name, "status": status, "seconds": round(seconds, 3), **extra})
    try:
        with open(sweep.folder / JOBS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as exc:
        log.warning("job outcome not recorded in %s: %s", sweep.folder / JOBS_FILE, exc)


def read_jobs(folder: Path) -> list[dict]:
    """Every well-formed job outcome the current launch recorded so far in a sweep folder (those
    after its last launch line); a malformed line (a half-written append, a hand edit) is
    skipped, since progress must never fail a job."""
    path = folder / JOBS_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    launches = [index for index, line in enumerate(lines) if line.startswith(LAUNCH)]
    return [job for job in map(_job_of, lines[launches[-1] + 1 if launches else 0:])
            if job is not None]


def mark_launch(folder: Path) -> None:
    """Start a new launch in a sweep folder that already has a jobs file, so that its progress,
    summary, parent run and exit status leave the earlier launches' jobs out."""
    path = folder / JOBS_FILE
    if path.is_file():
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f'{LAUNCH} "{time.strftime("%Y-%m-%dT%H:%M:%S")}"}}\n')


def _job_of(line: str) -> dict | None:
    """One jobs-file line as {name, status, seconds, ...}, or None when it is not one."""
    try:
        job = json.loads(line)
    except ValueError:
        return None
    if not isinstance(job, dict) or not isinstance(job.get("status"), str):
        return None
    seconds = job.get("seconds")
    valid = isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0
    return job | {"seconds": float(seconds) if valid else 0.0, "name": str(job.get("name", "?"))}


def eta_seconds(jobs: list[dict], total: int | None, workers: int) -> float | None:
    """Remaining time from the mean duration of jobs that actually trained."""
    trained = [job["seconds"] for job in jobs if job["status"] == "done"]
    if total is None or not trained:
        return None
    remaining = max(0, total - len(jobs))
    return sum(trained) / len(trained) * math.ceil(remaining / max(1, workers))


def eta_text(sweep: SweepInfo) -> str:
    """`; sweep ETA 4m10s` once a job has finished, for the job's closing log line."""
    if sweep.total == 1:
        return ""
    try:
        workers = int(OmegaConf.select(HydraConfig.get().launcher, "n_jobs") or 1)
        eta = eta_seconds(read_jobs(sweep.folder), sweep.total, workers)
    except Exception as exc:  # noqa: BLE001 - a progress line must never fail a finished job
        log.warning("sweep ETA unavailable: %s", exc)
        return ""
    return "" if eta is None else f"; sweep ETA {duration(eta)}"


def prepare_store(config: DictConfig) -> None:
    """Check the store; create schema and experiment once, so parallel jobs never race on them."""
    from mlflow.tracking import MlflowClient

    from tlbench.config import check_experiment_name
    from tlbench.tracking.store import check_tracking_store, ensure_experiment, resolve_tracking_uri

    check_experiment_name(config.tracking.experiment)
    uri = resolve_tracking_uri(config.tracking.uri)
    check_tracking_store(uri)
    ensure_experiment(MlflowClient(uri), config.tracking.experiment)
    launcher = OmegaConf.select(config, "hydra.launcher._target_") or ""
    if uri.startswith("sqlite:") and "BasicLauncher" not in launcher:
        log.warning("parallel jobs writing to one sqlite file can race; for parallel or cluster "
                    "sweeps start `tlbench server` and pass its tracking.uri")


def open_parent_run(client, experiment_id: str, sweep_id: str, command: str) -> str:
    """The sweep's parent run, RUNNING: created on the first launch, reused (set RUNNING again)
    when the same grid is launched again to resume it."""
    from tlbench.tracking.store import KIND_TAG, SWEEP_KIND, redact, sweep_parent_id

    run_id = sweep_parent_id(client, experiment_id, sweep_id)
    if run_id is None:
        return client.create_run(experiment_id, run_name=sweep_id, tags={
            "sweep_id": sweep_id, KIND_TAG: SWEEP_KIND, "command": redact(command),
            NOTE: f"sweep {sweep_id}: running"}).info.run_id
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, NOTE, f"sweep {sweep_id}: running again (resumed)")
    return run_id


def parent_status(jobs: list[dict], completed: bool) -> str:
    """How a sweep's parent run ends: KILLED if a job was killed, FAILED if one failed or the
    multirun did not complete, else FINISHED."""
    statuses = {job["status"] for job in jobs}
    if "killed" in statuses:
        return "KILLED"
    return "FAILED" if "failed" in statuses or not completed else "FINISHED"


def summary(folder: Path, elapsed: float) -> list[str]:
    """Closing lines of a sweep: counts by outcome, then each failure with its error."""
    jobs = read_jobs(folder)
    count = {status: sum(job["status"] == status for job in jobs)
             for status in ("done", "skipped", "failed", "killed", "planned")}
    head = (f"sweep finished in {duration(elapsed)}: {count['done']} done, "
            f"{count['skipped']} skipped (already FINISHED), {count['failed']} failed")
    if count["killed"]:
        head = head.replace("sweep finished", "sweep stopped") + \
            f", {count['killed']} killed (rerun the command to resume)"
    if count["planned"]:
        head = f"dry run: {count['planned']} to run, {count['skipped']} to skip"
    return [head] + [f"  {job['status'].upper()} {job['name']}: {job.get('error', '')}"
                     for job in jobs if job["status"] in ("failed", "killed")]


def check_output_folder(folder: str, key: str) -> None:
    """Create Hydra's output folder, or stop with one line before any run or job starts (Hydra
    itself would fail with a traceback, after the sweep's parent run was opened)."""
    from tlbench.paths import unwritable

    reason = unwritable(Path(folder))
    if reason:
        raise SystemExit(f"tlbench: error: {key}={folder}: cannot write there ({reason}); pass a "
                         "writable folder.")


class SweepCallback(Callback):
    """Prepares the tracking store and opens the sweep's parent run once before any job, and
    remembers the sweep for its summary and for closing the parent run."""

    folder: Path | None = None
    started: float = 0.0
    parent: tuple[str, str] | None = None  # (tracking URI, run id) while the parent is open
    next_lines: list[str] = []  # the UI link and report command, printed after the summary

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        """A single run: its output folder, which Hydra creates next (a traceback there)."""
        check_output_folder(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SweepCallback.started = time.monotonic()
        check_output_folder(config.hydra.sweep.dir, "hydra.sweep.dir")
        try:
            prepare_store(config)
        except TlbenchError as exc:  # Hydra would only warn and launch every job into it
            raise SystemExit(f"tlbench: error: {exc}") from None
        SweepCallback.folder = Path(config.hydra.sweep.dir).resolve()
        mark_launch(SweepCallback.folder)
        if not config.get("dry_run"):
            SweepCallback.parent = start_parent(config, SweepCallback.folder)
            SweepCallback.next_lines = next_commands(
                SweepCallback.parent[0], config.tracking.experiment,
                multirun_sweep_id(_sweep_overrides(config.hydra), SweepCallback.folder))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """Hydra calls this only when every job returned (it skips it after a failed job)."""
        SweepCallback.end_parent(completed=True)

    @classmethod
    def end_parent(cls, completed: bool) -> None:
        """End the parent run (once): its status from the jobs' outcomes, the summary as its
        description. `completed`: the multirun returned; otherwise it ends FAILED or KILLED."""
        if cls.parent is None or cls.folder is None:
            return
        from mlflow.tracking import MlflowClient

        from tlbench.tracking.store import OPEN_PARENTS

        (uri, run_id), cls.parent = cls.parent, None
        for key in [key for key, value in OPEN_PARENTS.items() if value == run_id]:
            del OPEN_PARENTS[key]
        jobs = read_jobs(cls.folder)
        status = parent_status(jobs, completed)
        client = MlflowClient(uri)
        client.set_tag(run_id, NOTE, f"{status}: " + summary(cls.folder, cls.elapsed())[0])
        client.set_terminated(run_id, status)

    @classmethod
    def elapsed(cls) -> float:
        """Seconds since the multirun this process launched started."""
        return time.monotonic() - cls.started

    @classmethod
    def finish(cls) -> None:
        """After the Hydra app returns or raises: close the parent run if Hydra did not (a job
        failed, or the sweep was interrupted), then log the summary."""
        try:
            cls.end_parent(completed=False)
        except Exception as exc:  # noqa: BLE001 - the summary still follows
            log.warning("the sweep's parent run was not closed: %s", exc)
        cls.print_summary()

    @classmethod
    def failed_jobs(cls) -> int:
        """How many jobs of the last multirun failed (0 when none ran)."""
        if cls.folder is None:
            return 0
        return sum(job["status"] == "failed" for job in read_jobs(cls.folder))

    @classmethod
    def print_summary(cls) -> None:
        """Log the closing lines of the multirun this process launched, if any, then (when a
        job trained or was found FINISHED) the commands that show its runs and report."""
        if cls.folder is None:
            return
        for line in summary(cls.folder, cls.elapsed()):
            log.info(line)
        if any(job["status"] in ("done", "skipped") for job in read_jobs(cls.folder)):
            for line in cls.next_lines:
                log.info(line)


def start_parent(config: DictConfig, folder: Path) -> tuple[str, str]:
    """Open the multirun's parent run in the launching process: (tracking URI, run id)."""
    from mlflow.tracking import MlflowClient

    from tlbench.tracking.store import OPEN_PARENTS, ensure_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(config.tracking.uri)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, config.tracking.experiment)
    sweep_id = multirun_sweep_id(_sweep_overrides(config.hydra), folder)
    command = " ".join(["python -m tlbench -m", *config.hydra.overrides.task])
    run_id = open_parent_run(client, experiment_id, sweep_id, command)
    OPEN_PARENTS[(client.tracking_uri, experiment_id, sweep_id)] = run_id  # its jobs need no search
    log.info("sweep %s: parent MLflow run %s", sweep_id, run_id)
    return uri, run_id
