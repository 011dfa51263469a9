"""Every config group composes and validates; bad values give one line naming key and choices."""

from __future__ import annotations

import itertools
import re

import pytest
from hydra.errors import ConfigCompositionException

from tlbench import config, registry
from tlbench.config import DenseHeadConfig, LogregHeadConfig, parse_config
from tlbench.errors import TlbenchError
from tlbench.strategy.partial_finetune import PartialFinetuneConfig

from .conftest import compose_config


def group_options(group: str) -> list[str]:
    """Option names of one config group, read from the packaged conf/ folder."""
    from importlib.resources import files

    folder = files("tlbench.conf") / group
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def test_every_registry_entry_has_its_packaged_yaml():
    """A strategy, head or data source is one registry entry plus one YAML; a registered
    backbone is its entry alone (tlbench/backbone/options.py), a file-read one has a YAML."""
    assert group_options("backbone") == sorted(registry.FILE_BACKBONES)
    assert group_options("head") == list(registry.HEADS)
    assert group_options("strategy") == list(registry.STRATEGIES)
    assert set(registry.SOURCES) <= set(group_options("data"))


@pytest.mark.parametrize(
    ("backbone", "strategy"),
    list(itertools.product(list(registry.BACKBONES), group_options("strategy"))),
)
def test_every_backbone_and_strategy_composes(backbone, strategy):
    entry, kind = registry.BACKBONES[backbone], registry.STRATEGIES[strategy]
    if entry.has_weights and not entry.normalized and kind.pretrained:  # the default source:
        with pytest.raises(TlbenchError, match="backbone.weights='source:digits04' is invalid: "
                                               f"expected null, imagenet or a weights file for "
                                               f"{backbone}: it has no normalisation layers"):
            parse_config(compose_config([f"backbone={backbone}", f"strategy={strategy}"]))
        return
    if not entry.trainable and kind.trains_base:
        with pytest.raises(TlbenchError, match=f"backbone='{backbone}' is invalid: expected "
                                               "strategy="):
            parse_config(compose_config([f"backbone={backbone}", f"strategy={strategy}"]))
        return
    config = parse_config(compose_config([f"backbone={backbone}", f"strategy={strategy}"]))
    assert config.backbone.name == backbone
    assert config.strategy.name == strategy
    assert config.tracking.run_name == f"{backbone}-{strategy}-nall-s0"
    # follows data.input_size for digits, or the backbone's minimum where that is larger
    assert config.backbone.input_size == max(32, registry.BACKBONES[backbone].min_input_size)


def test_defaults_match_public_keys():
    config = parse_config(compose_config([]))
    assert (config.backbone.name, config.strategy.name, config.data.name) == (
        "mobilenetv2", "feature_extraction", "digits")
    assert config.backbone.weights == "source:digits04"  # the default measures transfer
    assert config.data.classes == [5, 6, 7, 8, 9]
    assert config.data.train_size == "all"
    assert (config.trainer.epochs, config.trainer.batch_size, config.trainer.lr) == (10, 32, 0.001)
    assert (config.trainer.optimizer, config.trainer.patience) == ("adam", 3)
    assert config.tracking.uri is None and config.tracking.experiment == "tlbench"
    assert config.seed == 0


def test_head_group_fills_strategy_head():
    dense = parse_config(compose_config(["strategy=partial_finetune", "strategy.head.units=8"]))
    assert isinstance(dense.strategy.head, DenseHeadConfig) and dense.strategy.head.units == 8
    probe = parse_config(compose_config(["head=logreg", "strategy.head.c_grid=[0.5,2]"]))
    assert isinstance(probe.strategy.head, LogregHeadConfig)
    assert probe.strategy.head.c_grid == [0.5, 2.0]
    assert probe.tracking.run_name == "mobilenetv2-feature_extraction+logreg-nall-s0"


@pytest.mark.parametrize(("overrides", "message"), [
    (["head=logreg", "strategy=partial_finetune"], "head='logreg' is invalid: expected strategy"),
    (["head=logreg", "trainer.augment=true"], "head='logreg' is invalid"),
    (["head=logreg", "strategy.head.c_grid=[]"], "strategy.head.c_grid=[] is invalid"),
    (["strategy.head.name=svm"], "head='svm' is not a known head; choose one of dense, logreg"),
    (["backbone=pixels", "trainer.augment=true"], "backbone='pixels' is invalid"),
])
def test_head_and_pixels_combinations_are_checked(overrides, message):
    with pytest.raises(TlbenchError, match=re.escape(message)):
        parse_config(compose_config(overrides))


def test_pixels_has_no_weights_whatever_the_defaults_say():
    config = parse_config(compose_config(["backbone=pixels"]))
    assert (config.backbone.weights, config.backbone.bn_momentum) == (None, None)


def test_partial_finetune_has_its_own_knobs():
    config = parse_config(compose_config(["strategy=partial_finetune", "strategy.lr_scale=0.5"]))
    assert isinstance(config.strategy, PartialFinetuneConfig)
    assert (config.strategy.unfreeze_blocks, config.strategy.lr_scale) == (1, 0.5)


@pytest.mark.parametrize("size", ["10", "total:500", "all"])
def test_train_size_forms(size):
    assert parse_config(compose_config([f"data.train_size={size}"])).data.train_size == size


def test_input_size_null_means_backbone_default():
    config = parse_config(compose_config(["backbone=resnet50", "data.input_size=null"]))
    assert config.backbone.input_size == 224


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train_size=ten", "data.train_size='ten' is invalid"),
        ("data.train_size=0", "data.train_size='0' is invalid"),
        ("backbone.input_size=16", "backbone.input_size=16 is invalid: expected at least 32"),
        ("trainer.epochs=0", "trainer.epochs=0 is invalid"),
        ("trainer.optimizer=adamax", "expected one of adam, adamw, rmsprop, sgd"),
        ("trainer.epochs=many", "trainer.epochs"),
        ("+trainer.epoch=3", "trainer.epoch"),
        ("+seeds=3", "seeds: not a tlbench config key, so it would change nothing; did you mean "
                     "seed? the top-level keys are backbone, strategy, data, trainer, tracking, "
                     "pretrain, cache, seed, dry_run."),
        ("+lr=0.1", "lr: not a tlbench config key"),
        ("seed=abc", "seed='abc' is invalid: expected a whole number from 0 to 2147483647"),
        ("seed=-1", "seed=-1 is invalid"),
        ("seed=1.5", "seed=1.5 is invalid"),
        ("seed=2147483648", "seed=2147483648 is invalid"),
        ("data.split_seed=-3", "data.split_seed=-3 is invalid"),
        ("pretrain.seed=-1", "pretrain.seed=-1 is invalid"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(TlbenchError, match=re.escape(message)) as err:
        parse_config(compose_config([override]))
    assert "\n" not in str(err.value)


def test_a_section_seen_before_is_copied_from_its_memo():
    """A sweep's jobs share most sections: each is built once per process, and every config
    gets its own copy (a run may change its own); a changed value or a bad one is not memoised."""
    first = parse_config(compose_config(["trainer.lr=0.002", "strategy=partial_finetune"]))
    memos = len(config.TYPED)
    second = parse_config(compose_config(["trainer.lr=0.002", "strategy=partial_finetune"]))
    assert len(config.TYPED) == memos
    assert second == first
    assert second.trainer is not first.trainer and second.strategy is not first.strategy
    first.trainer.epochs, first.strategy.head.dropout = 99, 0.9
    third = parse_config(compose_config(["trainer.lr=0.002", "strategy=partial_finetune"]))
    assert third == second and third.trainer.epochs != 99 and third.strategy.head.dropout != 0.9
    assert parse_config(compose_config(["trainer.lr=0.003"])).trainer.lr == 0.003
    for _ in range(2):
        with pytest.raises(TlbenchError, match="trainer.epochs=0 is invalid"):
            parse_config(compose_config(["trainer.lr=0.002", "trainer.epochs=0"]))


def test_unfreeze_depth_beyond_backbone():
    with pytest.raises(TlbenchError, match="1 to 5: vgg16 has 5 stages"):
        parse_config(compose_config(["backbone=vgg16", "strategy=partial_finetune",
                                     "strategy.unfreeze_blocks=6"]))


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigCompositionException, match="Could not find 'backbone/resnet18'") as e:
        compose_config(["backbone=resnet18"])
    assert "mobilenetv2" in str(e.value.__cause__ or e.value) or "Available options" in str(e.value)
