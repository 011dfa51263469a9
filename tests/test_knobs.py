"""Knobs that change training do what they name: each optimizer fits; the epoch and learning-rate
settings of a strategy shape the phases it logs; TensorFlow's thread caps are applied."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import keras
import pytest

from tlbench.training.train import train_and_evaluate

from .conftest import build_run
from .test_train import EASY, run_as_the_cli_does

SMALL = ["backbone=mobilenetv3small", "data.classes=[5,6]", "data.train_size=10", "trainer.lr=0.01"]


def trained(config):
    """Train one config in-process: its result and plan."""
    dataset, plan = build_run(config)
    return train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed), plan


def test_each_optimizer_fits_and_trains_its_own_way(tiny_config):
    """adamw, sgd and rmsprop each fit a task a linear head must learn, along different
    val_loss curves (each knob reaches the optimizer)."""
    curves = {}
    for optimizer, lr in (("adamw", 0.01), ("sgd", 0.1), ("rmsprop", 0.01)):
        result = run_as_the_cli_does(
            tiny_config(*EASY, f"trainer.optimizer={optimizer}", f"trainer.lr={lr}")
        )
        assert result.metrics["test_accuracy"] > 0.8, optimizer  # chance is 0.5
        curves[optimizer] = tuple(epoch["val_loss"] for epoch in result.history)
    assert len(set(curves.values())) == 3


def phases_and_rates(history: list[dict], plan) -> list[tuple[str, float]]:
    """(phase, the learning rate it compiles at) of every epoch that ran, in order."""
    rates = {phase.name: phase.lr for phase in plan.phases}
    return [(epoch["phase"], pytest.approx(rates[epoch["phase"]], rel=1e-6)) for epoch in history]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["strategy=partial_finetune", "strategy.head_epochs=1", "strategy.finetune_epochs=2"],
            [("head", 0.01), ("finetune", 0.001), ("finetune", 0.001)],
        ),
        (
            [
                "strategy=gradual_unfreeze",
                "strategy.unfreeze_blocks=2",
                "strategy.head_epochs=2",
                "strategy.phase_epochs=1",
                "strategy.lr_decay=0.2",
            ],
            [("head", 0.01), ("head", 0.01), ("stage5", 0.001), ("stage4", 0.0002)],
        ),
        (
            ["strategy=lp_ft", "strategy.probe_epochs=2", "strategy.finetune_epochs=1"],
            [("probe", 0.01), ("probe", 0.01), ("finetune", 0.001)],
        ),
    ],
)
def test_phase_settings_shape_the_logged_phases(tiny_config, overrides, expected):
    result, plan = trained(tiny_config(*SMALL, "trainer.epochs=3", *overrides))
    assert phases_and_rates(result.history, plan) == expected
    assert result.metrics["epochs_run"] == len(expected)
    last = plan.phases[-1].model or plan.model  # recompiled at the last phase's rate
    assert float(keras.ops.convert_to_numpy(last.optimizer.learning_rate)) == pytest.approx(
        expected[-1][1], rel=1e-6
    )


THREADS = """
import sys
from hydra import compose, initialize_config_module
from tlbench.config import parse_config
from tlbench.quiet import import_keras

with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
    config = parse_config(compose(config_name="config", overrides=sys.argv[1:]))
import_keras()
from tlbench.training.train import configure_runtime
import tensorflow as tf

configure_runtime(config.trainer, config.seed, config.trainer.threads)  # as prepare() does
tf.constant(1.0) + 1.0  # TensorFlow starts its pools here
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def test_tensorflow_thread_caps_are_applied():
    env = os.environ | {"KERAS_BACKEND": "tensorflow"}
    out = subprocess.run(
        [sys.executable, "-c", THREADS, "trainer.threads=1"],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "1"]


def test_a_run_name_template_is_used_as_written_and_the_job_returns_val_accuracy(tmp_path):
    """The Hydra job (`tlbench.__main__.task`, as a launcher calls it) returns the run's
    val_accuracy, which Optuna-style sweepers maximise; a custom run name is the run's name."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from mlflow.tracking import MlflowClient
    from omegaconf import open_dict

    from tlbench.__main__ import task

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        *EASY,
        "data.input_size=32",
        f"tracking.uri={uri}",
        "tracking.run_name=mine-${backbone.name}-lr${trainer.lr}-s${seed}",
    ]
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    job_cfg = copy.deepcopy(cfg)
    with open_dict(job_cfg):
        del job_cfg["hydra"]  # as Hydra's run_job hands the job its config
    HydraConfig.instance().set_config(cfg)
    try:
        returned = task(job_cfg)
    finally:
        HydraConfig.instance().cfg = None
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    assert run.info.run_name == "mine-pixels-lr0.001-s0"
    assert returned == run.data.metrics["val_accuracy"] > 0.8  # chance is 0.5
