"""`python -m tlbench`: one benchmark run (or a Hydra multirun of them), read top to bottom.

validate config -> check tracking store -> source pretraining (if asked; cached) -> seed -> data
-> backbone -> strategy -> fit -> evaluate -> log to MLflow -> return val_accuracy (for sweepers
such as Optuna).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from tlbench.config import RunConfig, parse_config  # noqa: E402
from tlbench.errors import TlbenchError  # noqa: E402

log = logging.getLogger("tlbench")


def hydra_tags() -> dict[str, str]:
    """The sweep this job belongs to and the exact command that reruns it."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    folder = Path(hc.sweep.dir if multirun else hc.run.dir).resolve()
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:6]
    return {
        "sweep_id": f"{'_'.join(folder.parts[-2:])}-{digest}",
        "command": " ".join(["python -m tlbench", *hc.overrides.task]),
        "hydra_output_dir": hc.runtime.output_dir,
    }


def run(config: RunConfig, tags: dict[str, str]) -> float:
    """Train and evaluate one configuration, logging everything to MLflow."""
    from tlbench import track

    uri = track.resolve_tracking_uri(config.tracking.uri)
    track.check_tracking_store(uri)
    # Imported only now, so that config and store errors come before TensorFlow's ~5 s start-up.
    import keras

    from tlbench import backbone, data, pretrain, strategy, train

    spec = backbone.BACKBONES[config.backbone.name]
    weights = config.backbone.weights if strategy.uses_pretrained_weights(config.strategy.name) \
        else None
    kind = backbone.weights_kind(weights)
    tags = tags | track.environment_tags() | {"weights.kind": kind}
    log.info("run %s -> %s (experiment %s)", config.tracking.run_name, uri,
             config.tracking.experiment)
    with track.tracked_run(config, uri, tags) as run_id:
        checkpoint = None
        if kind == "source":  # setup, not fit: timed apart as pretrain_seconds (0 when cached)
            checkpoint = pretrain.source_checkpoint(config.backbone, config.pretrain,
                                                    config.trainer)
            weights = str(checkpoint.weights_path)
        setup_start = time.perf_counter()
        keras.backend.clear_session()
        train.configure_runtime(config.trainer, config.seed)
        dataset = data.load_dataset(config.data, config.backbone.input_size, config.seed)
        dataset = backbone.preprocessed(spec, dataset)
        log.info("data %s: %d train / %d val / %d test, %d classes", config.data.name,
                 len(dataset.y_train), len(dataset.y_val), len(dataset.y_test), dataset.n_classes)
        base = backbone.build_base(spec, config.backbone.input_size, weights,
                                   config.backbone.bn_momentum)
        log.info("backbone %s (weights=%s, %dpx)", spec.name, weights, config.backbone.input_size)
        plan = strategy.build_plan(base, spec, dataset.n_classes, config.strategy, config.trainer)
        setup_seconds = time.perf_counter() - setup_start
        log.info("strategy %s: phases %s", config.strategy.name,
                 ", ".join(f"{p.name}({p.epochs} ep, lr={p.lr:g})" for p in plan.phases))
        result = train.train_and_evaluate(plan, dataset, config.trainer)
        metrics = result.metrics | {"setup_seconds": setup_seconds}
        track.log_result(uri, run_id, metrics, result.history, {
            "config.yaml": OmegaConf.to_yaml(dataclasses.asdict(config)),
            "model_summary.txt": model_summary(plan.model),
        })
        track.log_weights(uri, run_id, backbone.weights_sha256(
            spec, config.backbone.input_size, weights), checkpoint)
        track.log_confusion_matrix(uri, run_id, result.confusion, dataset.class_names)
    log.info("done %s: test_accuracy=%.4f val_accuracy=%.4f fit_seconds=%.1f",
             config.tracking.run_name, metrics["test_accuracy"], metrics["val_accuracy"],
             metrics["fit_seconds"])
    return float(metrics["val_accuracy"])


def model_summary(model) -> str:
    """Keras' layer summary of the model (nested base expanded) as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), expand_nested=False)
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="pkg://tlbench.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: validate the composed config, then run it; user errors in one line."""
    try:
        return run(parse_config(cfg), hydra_tags())
    except TlbenchError as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("%s", exc)
            raise  # Hydra records the failed job, lets the others finish, then exits non-zero.
        raise SystemExit(f"tlbench: error: {exc}") from None


if __name__ == "__main__":
    main()
