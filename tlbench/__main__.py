"""`python -m tlbench`: one benchmark run (or a Hydra multirun of them), read top to bottom.

validate config -> check tracking store -> skip if already FINISHED -> strategy object ->
prepare (runtime, source checkpoint, data, splits, base) -> strategy trains and evaluates ->
log to MLflow -> return val_accuracy (for sweepers such as Optuna).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see tlbench/quiet.py
# MLflow's HTTP retries (a tracking server restarting) add jitter from Python's global `random`,
# where Keras draws its default seeds: a retried call would change the run's initial weights.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import CompactHydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from tlbench import sweep  # noqa: E402
from tlbench.config import RunConfig, parse_config  # noqa: E402
from tlbench.errors import TlbenchError, last_line  # noqa: E402

log = logging.getLogger("tlbench")


class JobError(CompactHydraException):
    """A job's one-line TlbenchError, as Hydra reports it at the end of a multirun."""


@dataclass(frozen=True)
class Outcome:
    """How a job ended: trained (done), skipped as already FINISHED, or planned in a dry run."""

    status: str
    val_accuracy: float = float("nan")
    summary: str = ""


def run(config: RunConfig, sweep_info: sweep.SweepInfo, dry_run: bool) -> Outcome:
    """Train and evaluate one configuration, logging everything to MLflow."""
    from tlbench.tracking import identity, runs, store

    uri = store.resolve_tracking_uri(config.tracking.uri)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN  # its store was checked at the start
    store.check_tracking_store(uri, store.OUTAGE_SECONDS if multirun else 0.0)
    digest = identity.config_hash(config)
    finished = runs.finished_run(uri, config, digest)
    if finished is not None and config.tracking.resume:
        return Outcome("skipped", finished.data.metrics.get("val_accuracy", float("nan")),
                       f"already FINISHED as run {finished.info.run_id}")
    if dry_run:
        return Outcome("planned", summary="would run")
    # Imported only now, so that config and store errors come before TensorFlow's ~5 s start-up.
    from tlbench import runtime
    from tlbench.quiet import import_keras

    threads = config.trainer.threads or sweep.worker_threads()
    runtime.cap_threads_before_start(threads)
    import_keras()
    from tlbench import prepare, strategy
    from tlbench.backbone import weights_kind

    adapt = strategy.for_run(config)
    entry = config.backbone.entry()
    weights = adapt.weights(entry, config.backbone.weights)
    route = adapt.route(config, entry)
    prepare.check_cache_folders(config, weights, route.inputs != "images")
    tags = job_tags(sweep_info) | runs.environment_tags(config.trainer.precision) | {
        "weights.kind": weights_kind(weights), "inputs": route.inputs}
    with runs.tracked_run(config, uri, tags, digest) as run_id:
        prepared = prepare.prepare(config, weights, threads)
        runs.log_prepared(uri, run_id, prepared)
        result = adapt.train(prepared)
        metrics = result.metrics | {"setup_seconds": prepared.setup_seconds,
                                    "process_peak_rss_mb": peak_rss_mb()}
        runs.log_result(uri, run_id, metrics, result.history, {
            "config.yaml": OmegaConf.to_yaml(dataclasses.asdict(config)),
            "model_summary.txt": result.summary,
        })
        runs.log_confusion_matrix(uri, run_id, result.confusion, prepared.source.class_names)
    return Outcome("done", metrics["val_accuracy"],
                   f"test_accuracy={metrics['test_accuracy']:.4f} "
                   f"fit_seconds={metrics['fit_seconds']:.1f}")


def job_tags(sweep_info: sweep.SweepInfo) -> dict[str, str]:
    """The sweep this job belongs to and the exact command that reruns it."""
    hc = HydraConfig.get()
    return {
        "sweep_id": sweep_info.sweep_id,
        "command": " ".join(["python -m tlbench", *hc.overrides.task]),
        "hydra_output_dir": hc.runtime.output_dir,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (grows across a sequential sweep)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def out_of_memory(exc: MemoryError) -> TlbenchError:
    """A MemoryError (NumPy's names the array it could not allocate) as one line saying what
    to lower."""
    return TlbenchError(f"out of memory: {last_line(exc)}; lower backbone.input_size (images "
                        "are held at it), trainer.batch_size or data.train_size.")


def task(cfg: DictConfig) -> float:
    """One Hydra job: progress line, run, outcome recorded for the sweep summary."""
    sweep_info = sweep.current_sweep()
    name = " ".join(HydraConfig.get().overrides.task) or "defaults"
    start = time.monotonic()
    try:
        config = parse_config(cfg)
        name = config.tracking.run_name
        log.info("%s%s", sweep.progress_prefix(sweep_info), name)
        outcome = run(config, sweep_info, bool(cfg.get("dry_run")))
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGINT, SIGTERM: the run ended KILLED
        sweep.record_job(sweep_info, name, "killed", time.monotonic() - start,
                         error=type(exc).__name__)
        raise
    except Exception as exc:
        exc = out_of_memory(exc) if isinstance(exc, MemoryError) else exc
        sweep.record_job(sweep_info, name, "failed", time.monotonic() - start,
                         error=last_line(exc))
        if isinstance(exc, TlbenchError) and HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(f"tlbench: error: {exc}") from None
        log.error("%sFAILED %s: %s", sweep.progress_prefix(sweep_info), name, exc)
        if isinstance(exc, TlbenchError):  # Hydra prints a compact error as its one line
            raise JobError(str(exc)) from None
        raise  # Hydra records the failed job, lets the others finish, then exits non-zero.
    seconds = time.monotonic() - start
    sweep.record_job(sweep_info, name, outcome.status, seconds)
    log.info("%s%s %s: %s (%.1fs)%s", sweep.progress_prefix(sweep_info), outcome.status, name,
             outcome.summary, seconds, sweep.eta_text(sweep_info))
    if HydraConfig.get().mode != RunMode.MULTIRUN and outcome.status != "planned":
        log_next_commands(config, sweep_info.sweep_id)
    return outcome.val_accuracy


def log_next_commands(config: RunConfig, sweep_id: str) -> None:
    """A single run's closing lines: its runs in the MLflow UI and its report."""
    from tlbench.tracking.next_steps import next_commands
    from tlbench.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(config.tracking.uri)
    for line in next_commands(uri, config.tracking.experiment, sweep_id):
        log.info(line)


sweep.register_sweeps()
hydra_app = hydra.main(version_base="1.3", config_path="pkg://tlbench.conf",
                       config_name="config")(task)


SUBCOMMANDS = {"server": "tlbench.tracking.server", "report": "tlbench.report.__main__",
               "weights": "tlbench.cli.weights", "rank": "tlbench.rank",
               "backbones": "tlbench.cli.backbones"}


def main() -> None:
    """Console entry point: a subcommand, or the Hydra app then the sweep summary."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    try:
        hydra_app()
    finally:
        sweep.SweepCallback.finish()
    if sweep.SweepCallback.failed_jobs():
        sys.exit(1)


if __name__ == "__main__":
    main()
