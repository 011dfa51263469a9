"""Early stopping (`trainer.patience`, 3 by default): training stops once val_loss has not improved
for `patience` epochs, the best epoch's weights are restored, `epochs_run` counts the epochs that
ran; LP-FT's probe ends at convergence, then fine-tunes."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.training.batches import batches
from tlbench.training.train import train_and_evaluate

from .conftest import build_run
from .test_cli import runs_of, tlbench

# A head on raw pixels at a learning rate far too high: val_loss bottoms out within a few epochs.
UNSTABLE = [
    "backbone=pixels",
    "strategy=feature_extraction",
    "cache.enabled=false",
    "data.train_size=20",
    "data.classes=[5,6]",
    "trainer.lr=3.0",
    "trainer.epochs=40",
]


def stopped_epoch(val_losses: list[float], patience: int) -> int:
    """How many epochs Keras' rule runs: the best epoch, then `patience` without improvement."""
    best = int(np.argmin(val_losses))
    return min(len(val_losses), best + patience + 1)


def val_loss(plan, dataset, batch_size: int) -> float:
    """The trained model's loss on the validation split, in inference mode, as `fit` computed
    it each epoch."""
    val = batches(dataset.x_val, dataset.y_val, batch_size)
    return plan.model.evaluate(val, verbose=0, return_dict=True)["loss"]


def test_training_stops_when_val_loss_stops_improving_and_keeps_the_best(tiny_config):
    config = tiny_config(*UNSTABLE, "trainer.patience=2")
    dataset, plan = build_run(config)
    result = train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed)
    losses = [epoch["val_loss"] for epoch in result.history]
    assert result.metrics["epochs_run"] == len(losses) < 40  # it stopped early
    assert len(losses) == stopped_epoch(losses, 2)
    assert int(np.argmin(losses)) == len(losses) - 3  # the last 2 epochs did not improve on it
    assert val_loss(plan, dataset, config.trainer.batch_size) == pytest.approx(
        min(losses), rel=1e-4
    )  # the best epoch's weights, not the last's
    assert min(losses) < losses[-1]


def test_without_patience_every_epoch_runs_and_the_last_weights_stay(tiny_config):
    config = tiny_config(*UNSTABLE, "trainer.epochs=6")  # TINY sets trainer.patience=null
    dataset, plan = build_run(config)
    result = train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed)
    losses = [epoch["val_loss"] for epoch in result.history]
    assert result.metrics["epochs_run"] == len(losses) == 6
    assert val_loss(plan, dataset, config.trainer.batch_size) == pytest.approx(losses[-1], rel=1e-4)


def test_lp_ft_probe_ends_at_convergence_then_fine_tunes(tiny_config):
    config = tiny_config(
        "strategy=lp_ft",
        "backbone=mobilenetv3small",
        "data.train_size=20",
        "data.classes=[5,6]",
        "trainer.lr=3.0",
        "trainer.patience=2",
        "strategy.probe_epochs=40",
        "strategy.finetune_epochs=1",
    )
    dataset, plan = build_run(config)
    result = train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed)
    probe = [epoch["val_loss"] for epoch in result.history if epoch["phase"] == "probe"]
    assert len(probe) < 40 and len(probe) == stopped_epoch(probe, 2)
    assert [epoch["phase"] for epoch in result.history[len(probe) :]] == ["finetune"]
    assert result.metrics["epochs_run"] == len(probe) + 1


def test_the_default_patience_logs_the_epochs_that_ran(tmp_path):
    """Through the CLI with trainer.patience left at its default (3): `epochs_run` and the
    per-epoch history in MLflow agree with the stopping rule."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*UNSTABLE, "data.input_size=32", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = runs_of(uri)
    assert run.data.params["trainer.patience"] == "3"
    losses = [
        m.value
        for m in sorted(
            MlflowClient(uri).get_metric_history(run.info.run_id, "epoch_val_loss"),
            key=lambda m: m.step,
        )
    ]
    assert run.data.metrics["epochs_run"] == len(losses) == stopped_epoch(losses, 3) < 40
