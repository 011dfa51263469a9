"""The strategies beyond the seeds through the real CLI, each run's trainable count checked against
one computed here from a fresh network; fine_tune_at, LoRA on the cached cut, LoRA merging."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from tlbench import registry, strategy
from tlbench.errors import TlbenchError
from tlbench.prepare import prepare
from tlbench.strategy.lora import merge
from tlbench.training.train import count_params, fit

from .conftest import build_run, strategy_model
from .test_cli import TINY, assert_one_line_error, runs_of, tlbench

NEW = ("gradual_unfreeze", "lp_ft", "bitfit", "lora")
MOBILENET = registry.BACKBONES["mobilenetv2"]
HEAD = 1280 * 5 + 5  # MobileNetV2's 1280 pooled features into the 5 digit classes
CLI_HEAD = 1280 * 2 + 2  # the CLI runs below keep digits 5 and 6 only


def fresh_base():
    """The headless MobileNetV2 every run below trains (32 px, random weights)."""
    return keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))


def is_bn(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def lora_factors(layer, rank: int) -> int:
    """Sizes of A (kernel shape but the last axis, x rank) and B (rank x outputs)."""
    kernel = layer.kernel.shape
    return rank * (int(np.prod(kernel[:-1])) + kernel[-1])


def expected_trainable(name: str, base) -> int:
    """What each strategy's default YAML should leave trainable in the CLI runs, counted from the
    layers."""
    layers, head = base.layers, CLI_HEAD
    if name == "gradual_unfreeze":  # the top 3 stages (stage 3 on), BatchNorm frozen
        return head + sum(layer.count_params() for layer in layers
                          if MOBILENET.stages_in(base).get(layer.name, 0) >= 3
                          and not is_bn(layer))
    if name == "lp_ft":  # everything but BatchNorm's moving mean and variance
        return head + base.count_params() - sum(layer.count_params() // 2 for layer in layers
                                                if is_bn(layer))
    if name == "bitfit":  # biases (none in MobileNetV2's convolutions) and BatchNorm gamma, beta
        return head + sum(layer.count_params() // 2 for layer in layers if is_bn(layer)) + sum(
            int(np.prod(layer.bias.shape)) for layer in layers if getattr(layer, "use_bias", 0))
    assert name == "lora"  # rank 4 on every Conv2D (depthwise ones cannot take LoRA)
    return head + sum(lora_factors(layer, 4) for layer in layers
                      if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense))


@pytest.fixture(scope="module")
def strategies_multirun(tmp_path_factory):
    """One real multirun of the new strategies (defaults from their YAML) into sqlite, on digits 5
    and 6 only: LP-FT's 50 probe epochs each predict the validation images through the base."""
    workdir = tmp_path_factory.mktemp("strategies")
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = tlbench("-m", f"strategy={','.join(NEW)}", "backbone=mobilenetv2", *TINY,
                     "data.classes=[5,6]", cwd=workdir, uri=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, uri, {r.info.run_name.split("-")[1]: r for r in runs_of(uri)}


def test_each_strategy_finishes_with_its_trainable_count(strategies_multirun):
    _, _, runs = strategies_multirun
    base = fresh_base()
    assert sorted(runs) == sorted(NEW)
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        metrics = run.data.metrics
        assert metrics["params_trainable"] == expected_trainable(name, base), name
        assert metrics["params_trainable"] + metrics["params_non_trainable"] == \
            metrics["params_total"]


def test_counts_order_as_the_methods_say(strategies_multirun):
    _, _, runs = strategies_multirun
    trainable = {name: run.data.metrics["params_trainable"] for name, run in runs.items()}
    assert trainable["bitfit"] < trainable["lora"] < trainable["gradual_unfreeze"] \
        < trainable["lp_ft"]


def test_gradual_unfreeze_logs_its_phases(strategies_multirun):
    result, _, runs = strategies_multirun
    run = runs["gradual_unfreeze"]
    phases = "phases head(1 ep, lr=0.001, on features), stage5(1 ep, lr=0.0001, on cut), " \
             "stage4(1 ep, lr=5e-05, on cut), stage3(1 ep, lr=2.5e-05, on cut)"
    assert phases in result.stdout + result.stderr
    assert run.data.tags["inputs"] == "cut"
    assert {key: value for key, value in run.data.metrics.items()
            if key.startswith("epochs_")} == {"epochs_run": 4, "epochs_head": 1,
                                              "epochs_stage5": 1, "epochs_stage4": 1,
                                              "epochs_stage3": 1}


def test_lp_ft_probes_then_fine_tunes(strategies_multirun):
    result, _, runs = strategies_multirun
    assert "phases probe(50 ep, lr=0.001, on images), finetune(1 ep, lr=0.0001" in (
        result.stdout + result.stderr)
    assert runs["lp_ft"].data.metrics["epochs_run"] == 51


def test_report_ranks_every_new_strategy(strategies_multirun, tmp_path):
    _, uri, _ = strategies_multirun
    result = tlbench("report", "--tracking-uri", uri, "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (report,) = tmp_path.glob("*.md")
    text = report.read_text()
    for name in NEW:
        assert name.replace("_", "\\_") in text


@pytest.mark.parametrize(("args", "fragment"), [
    (["strategy.fine_tune_at=100"],
     "strategy.fine_tune_at=100 is invalid: expected exactly one of strategy.unfreeze_blocks, "
     "strategy.unfreeze_fraction and strategy.fine_tune_at set (set: unfreeze_blocks, "
     "fine_tune_at; null the others)"),
    (["strategy.unfreeze_blocks=null", "strategy.fine_tune_at=-1"],
     "strategy.fine_tune_at=-1 is invalid: expected a layer index, 0 or more"),
])
def test_fine_tune_at_errors_are_one_line(tmp_path, args, fragment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("strategy=partial_finetune", *args, cwd=tmp_path, uri=uri)
    assert_one_line_error(result, fragment)
    assert runs_of(uri) == []


def test_fine_tune_at_trains_the_layers_from_that_index(tiny_config):
    config = tiny_config("strategy=partial_finetune", "strategy.unfreeze_blocks=null",
                         "strategy.fine_tune_at=100")
    assert strategy.for_run(config).route(config, MOBILENET).inputs == "images"
    _, plan = build_run(config)
    for phase in plan.phases:
        phase.set_trainable()
    base = fresh_base()
    assert count_params(plan.model)["params_trainable"] == HEAD + sum(
        layer.count_params() for layer in base.layers[100:] if not is_bn(layer))


def test_fine_tune_at_beyond_the_base_is_one_line(tiny_config):
    config = tiny_config("strategy=partial_finetune", "strategy.unfreeze_blocks=null",
                         "strategy.fine_tune_at=1000")
    with pytest.raises(TlbenchError, match=re.escape(
            "strategy.fine_tune_at=1000 is invalid: expected a layer index below 154 (the base's "
            "layer count).")):
        build_run(config)


def test_lora_on_the_top_stage_trains_on_the_cached_cut(tiny_config):
    config = tiny_config("strategy=lora", "strategy.blocks=1", "strategy.rank=2")
    adapt = strategy.for_run(config)
    result = adapt.train(prepare(config, None, None))
    base = fresh_base()
    assert result.metrics["params_trainable"] == HEAD + sum(
        lora_factors(layer, 2) for layer in base.layers
        if isinstance(layer, keras.layers.Conv2D)
        and MOBILENET.stages_in(base).get(layer.name) == 5)
    assert "frozen_rows_computed" in result.metrics  # it read the cut, not images


def test_lora_predicts_the_same_once_merged(tiny_config):
    dataset, plan = build_run(tiny_config("strategy=lora", "strategy.blocks=2",
                                          "trainer.lr=0.01"))
    fit(plan, {"images": dataset}, tiny_config().trainer, seed=0)
    model = strategy_model(plan.model)
    lora = [layer for layer in model.layers[1].layers if getattr(layer, "lora_enabled", 0)]
    assert any(np.abs(keras.ops.convert_to_numpy(layer.lora_kernel_b)).max() > 0
               for layer in lora)  # the update is not zero
    merged = merge(model)
    assert not any(getattr(layer, "lora_enabled", 0) for layer in merged.layers[1].layers)
    factors = sum(lora_factors(layer, 4) for layer in lora)
    assert merged.count_params() == model.count_params() - factors
    x = plan.model.get_layer("preprocess")(dataset.x_test.load())
    np.testing.assert_allclose(merged.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_strategies_sweep_lists_every_strategy_three_times(tmp_path):
    result = tlbench("-m", "+sweep=strategies", "dry_run=true", cwd=tmp_path,
                     uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dry run: 24 to run, 0 to skip" in result.stdout
    for name in registry.STRATEGIES:
        assert result.stdout.count(f"planned mobilenetv2-{name}-nall-s") == 3, name
