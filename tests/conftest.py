"""Shared fixtures: Hydra composition of the packaged configs and tiny, fast run settings."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from tlbench.config import RunConfig, parse_config  # noqa: E402

# Random init: tests that want source pretraining ask for it with tiny pretrain settings.
TINY = ["data.input_size=32", "data.train_size=5", "trainer.epochs=1", "trainer.patience=null",
        "backbone.weights=null"]


@pytest.fixture(scope="session", autouse=True)
def private_checkpoint_cache(tmp_path_factory):
    """Source checkpoints made by tests (and the CLIs they start) go to a temporary cache, one
    for the whole session: shared by pytest-xdist's workers (its lock trains each once)."""
    previous = os.environ.get("TLBENCH_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' basetemps share this session's root
        shared = tmp_path_factory.getbasetemp().parent / "tlbench-cache"
        shared.mkdir(exist_ok=True)
        os.environ["TLBENCH_CACHE"] = str(shared)
    else:
        os.environ["TLBENCH_CACHE"] = str(tmp_path_factory.mktemp("pretrained"))
    yield
    if previous is None:
        os.environ.pop("TLBENCH_CACHE")
    else:
        os.environ["TLBENCH_CACHE"] = previous


@pytest.fixture(autouse=True)
def restored_environment():
    """What a test leaves in os.environ ends with it (a CLI's main run in-process sets MLflow's
    retry count for the process), so no test depends on the ones run before it in a worker."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


def backend_or_skip(name: str) -> None:
    """Skip a test whose Keras backend is not installed, unless TLBENCH_REQUIRE_BACKENDS (set by
    .ci/run, e.g. "jax torch") names it: then a missing backend fails the test, visibly."""
    if name in os.environ.get("TLBENCH_REQUIRE_BACKENDS", "").split():
        __import__(name)  # ImportError: the test fails
    else:
        pytest.importorskip(name)


def compose_config(overrides: list[str]):
    """Compose conf/ exactly as `python -m tlbench` does, with overrides."""
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def tiny_config():
    """A validated RunConfig for a 32px, 5-per-class, 1-epoch run; pass extra overrides."""

    def make(*overrides: str) -> RunConfig:
        return parse_config(compose_config([*TINY, *overrides]))

    return make


def data_config(option: str, **overrides):
    """A typed data config from its packaged YAML plus overrides (no Hydra app needed)."""
    from tlbench import registry
    from tlbench.config import group_config

    return group_config("data", option, registry.SOURCES[option].Config, **overrides)


def build_run(config: RunConfig):
    """Data and plan for a config, exactly as the CLI builds them (tracking aside)."""
    from tlbench import backbone, strategy
    from tlbench.prepare import prepare

    adapt = strategy.for_run(config)
    prepared = prepare(config, adapt.weights(prepared_entry(config), config.backbone.weights),
                       config.trainer.threads)
    dataset = prepared.dataset()
    plan = adapt.plan(prepared.base, prepared.entry, dataset.n_classes, config.trainer)
    plan.model = backbone.on_pixels(prepared.entry, plan.model)  # uint8 pixels, as Strategy.train
    return dataset, plan


def strategy_model(model):
    """The model a strategy built, inside the uint8-pixels model that `build_run` returns."""
    return model.layers[-1]


def prepared_entry(config: RunConfig):
    """The entry of the config's backbone."""
    return config.backbone.entry()


def assert_trained_alike(warm, cold) -> None:
    """Two RunResults of one configuration (a run on reused models, a cold run) trained alike:
    the same epoch history, accuracies, parameter counts, multiply-adds and confusion matrix."""
    assert warm.history == cold.history
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "params_total",
                "params_trainable", "flops"):
        assert warm.metrics[key] == cold.metrics[key], key
    np.testing.assert_array_equal(warm.confusion, cold.confusion)
