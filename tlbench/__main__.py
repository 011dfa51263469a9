"""`python -m tlbench`: one benchmark run (or a Hydra multirun of them), read top to bottom.

validate config -> check tracking store -> skip if already FINISHED -> source pretraining (if
asked; cached) -> seed -> data -> backbone -> strategy -> fit -> evaluate -> log to MLflow
-> return val_accuracy (for sweepers such as Optuna).
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

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from tlbench import sweep  # noqa: E402
from tlbench.config import RunConfig, parse_config  # noqa: E402
from tlbench.errors import TlbenchError, last_line  # noqa: E402

log = logging.getLogger("tlbench")


@dataclass(frozen=True)
class Outcome:
    """How a job ended: trained (done), skipped as already FINISHED, or planned in a dry run."""

    status: str
    val_accuracy: float = float("nan")
    summary: str = ""


def run(config: RunConfig, sweep_info: sweep.SweepInfo, dry_run: bool) -> Outcome:
    """Train and evaluate one configuration, logging everything to MLflow."""
    from tlbench import track

    uri = track.resolve_tracking_uri(config.tracking.uri)
    track.check_tracking_store(uri)
    finished = track.finished_run(uri, config)
    if finished is not None and config.tracking.resume:
        return Outcome("skipped", finished.data.metrics.get("val_accuracy", float("nan")),
                       f"already FINISHED as run {finished.info.run_id}")
    if dry_run:
        return Outcome("planned", summary="would run")
    # Imported only now, so that config and store errors come before TensorFlow's ~5 s start-up.
    from tlbench.quiet import import_tensorflow
    import_tensorflow()
    import keras

    from tlbench import backbone, data, features, pretrain, strategy, train

    spec = backbone.BACKBONES[config.backbone.name]
    weights = config.backbone.weights if strategy.uses_pretrained_weights(
        config.strategy.name, config.backbone.name) else None
    kind = backbone.weights_kind(weights)
    route = features.route(config)
    tags = job_tags(sweep_info) | track.environment_tags() | {"weights.kind": kind,
                                                               "inputs": route.inputs}
    with track.tracked_run(config, uri, tags) as run_id:
        checkpoint = None
        if kind == "source":  # setup, not fit: timed apart as pretrain_seconds (0 when cached)
            checkpoint = pretrain.source_checkpoint(config.backbone, config.pretrain,
                                                    config.trainer)
            weights = str(checkpoint.weights_path)
        setup_start = time.perf_counter()
        keras.backend.clear_session()
        train.configure_runtime(config.trainer, config.seed,
                                config.trainer.threads or sweep.worker_threads())
        source = data.load_source(config.data)
        splits = data.split_indices(source, config.data, config.seed)
        log.info("data %s: %d train / %d val / %d test, %d classes", config.data.name,
                 len(splits.train), len(splits.val), len(splits.test), len(source.class_names))
        track.set_tags(uri, run_id, {"class_names": ", ".join(source.class_names)[:5000]})
        base = backbone.build_base(spec, config.backbone.input_size, weights,
                                   config.backbone.bn_momentum)
        log.info("backbone %s (weights=%s, %dpx); trains on %s: %s", spec.name, weights,
                 config.backbone.input_size, route.inputs, route.reason)
        setup_seconds = time.perf_counter() - setup_start
        if route.inputs == "images":
            result = train_on_images(config, spec, base, source, splits)
        else:
            result = train_on_frozen(config, spec, base, source, splits, route)
        metrics = result.metrics | {"setup_seconds": setup_seconds,
                                    "process_peak_rss_mb": peak_rss_mb()}
        track.log_result(uri, run_id, metrics, result.history, {
            "config.yaml": OmegaConf.to_yaml(dataclasses.asdict(config)),
            "model_summary.txt": result.summary,
        })
        sha256 = checkpoint.manifest["weights_sha256"] if checkpoint else \
            backbone.weights_sha256(spec, config.backbone.input_size, weights)
        track.log_weights(uri, run_id, sha256, checkpoint)
        track.log_confusion_matrix(uri, run_id, result.confusion, source.class_names)
    return Outcome("done", metrics["val_accuracy"],
                   f"test_accuracy={metrics['test_accuracy']:.4f} "
                   f"fit_seconds={metrics['fit_seconds']:.1f}")


def train_on_images(config: RunConfig, spec, base, source, splits):
    """The whole model fitted on preprocessed images (the Keras guide's path)."""
    from tlbench import backbone, data, strategy, train

    dataset = backbone.preprocessed(
        spec, data.materialise(source, splits, config.backbone.input_size))
    plan = strategy.build_plan(base, spec, dataset.n_classes, config.strategy, config.trainer)
    log_phases(config, plan)
    result = train.train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed)
    result.summary = model_summary(plan.model)
    return result


def train_on_frozen(config: RunConfig, spec, base, source, splits, route):
    """The trainable part fitted on cached frozen outputs: pooled features, plus the activations
    at the cut for partial fine-tuning. Their cost is logged apart as feature_seconds."""
    from tlbench import features, strategy, train

    root = features.cache_root(config.cache)
    head, n_classes = config.strategy.head, len(source.class_names)
    cut = strategy.first_unfrozen_cut(base, spec, config.strategy.unfreeze_blocks) \
        if route.inputs == "cut" else None
    taps = features.frozen_datasets(
        base, spec, source, splits, config.backbone.input_size,
        [features.POOLED, *([cut] if cut else [])], root, config.trainer.batch_size,
        config.cache.fill_limit)
    inputs = {"features": taps[0].data} | ({"cut": taps[1].data} if cut else {})
    if head.name == "logreg":
        log.info("strategy %s: logistic regression over C in %s", config.strategy.name,
                 head.c_grid)
        result = train.train_logreg(inputs["features"], head, base.count_params(), config.seed)
        result.summary = model_summary(base)
    else:
        if cut:
            plan = strategy.partial_finetune_on_cut(base, spec, n_classes, config.strategy,
                                                    config.trainer, cut)
        else:
            plan = strategy.feature_extraction_on_features(
                base, spec, inputs["features"].x_train.shape[1], n_classes, config.strategy,
                config.trainer)
        log_phases(config, plan)
        result = train.train_and_evaluate(plan, inputs, config.trainer, config.seed)
        result.summary = model_summary(plan.full_model)
    computed = sum(tap.computed for tap in taps)
    result.metrics |= {"cache_hit": float(root is not None and computed == 0),
                       "frozen_rows_computed": computed,
                       "feature_seconds": sum(tap.seconds for tap in taps),
                       "feature_wait_seconds": sum(tap.waited for tap in taps)}
    return result


def log_phases(config: RunConfig, plan) -> None:
    """One line naming the strategy's phases, epochs and learning rates."""
    log.info("strategy %s: phases %s", config.strategy.name,
             ", ".join(f"{p.name}({p.epochs} ep, lr={p.lr:g}, on {p.inputs})"
                       for p in plan.phases))


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


def model_summary(model) -> str:
    """Keras' layer summary of the model as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


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
        sweep.record_job(sweep_info, name, "failed", time.monotonic() - start,
                         error=last_line(exc))
        if isinstance(exc, TlbenchError) and HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(f"tlbench: error: {exc}") from None
        log.error("%sFAILED %s: %s", sweep.progress_prefix(sweep_info), name, exc)
        raise  # Hydra records the failed job, lets the others finish, then exits non-zero.
    seconds = time.monotonic() - start
    sweep.record_job(sweep_info, name, outcome.status, seconds)
    log.info("%s%s %s: %s (%.1fs)%s", sweep.progress_prefix(sweep_info), outcome.status, name,
             outcome.summary, seconds, sweep.eta_text(sweep_info))
    return outcome.val_accuracy


sweep.register_sweeps()
hydra_app = hydra.main(version_base="1.3", config_path="pkg://tlbench.conf",
                       config_name="config")(task)


SUBCOMMANDS = {"server": "tlbench.server", "report": "tlbench.report.__main__",
               "weights": "tlbench.weights", "rank": "tlbench.rank"}


def main() -> None:
    """Console entry point: a subcommand, or the Hydra app then the sweep summary."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    try:
        hydra_app()
    finally:
        sweep.SweepCallback.print_summary()
    if sweep.SweepCallback.failed_jobs():
        sys.exit(1)


if __name__ == "__main__":
    main()
