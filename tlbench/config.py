"""Typed run configuration: Hydra's composed config is checked once, here, before any work.

The packaged YAML files (`conf/`) are the one home of every default; these dataclasses declare
the types and constraints. A strategy's and a data source's own settings are declared beside
them (`tlbench/strategy/`, `tlbench/data/`) and found through the registries.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlbench import registry
from tlbench.errors import TlbenchError, check, check_choice, check_seed

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
TRAIN_SIZE_PATTERN = re.compile(r"^(all|[1-9]\d*|total:[1-9]\d*)$")
SOURCE_PREFIX = "source:"

OmegaConf.register_new_resolver(
    "head_suffix", lambda name: "" if name == "dense" else f"+{name}", replace=True)
"""Run names mark a non-default head: mobilenetv2-feature_extraction+logreg-n10-s0."""
OmegaConf.register_new_resolver(
    "task_prefix", lambda task: "" if task is None else f"{task}-", replace=True)
"""Run names start with a suite's task: shapes4-mobilenetv2-feature_extraction-n10-s0."""


@dataclass(kw_only=True)
class BackboneConfig:
    """Which registered network, with which weights, at which input size.

    Networks read from a file (backbone=keras_file, kerashub) declare a subclass with their own
    settings beside their loader (tlbench/backbone/), found through registry.FILE_BACKBONES."""

    name: str
    weights: str | None
    input_size: int | None
    bn_momentum: float | None

    def entry(self):
        """The run's backbone entry (BackboneSpec): the registered one; a subclass reads its
        file. Every stage looks the entry up through here."""
        return registry.BACKBONES[self.name]

    def content_digest(self) -> str | None:
        """A digest of the file the network is read from (None for a registered network): part
        of the run's identity."""
        return None

    def __post_init__(self) -> None:
        entry = self.entry()
        if self.weights is not None and self.weights.startswith(SOURCE_PREFIX):
            source = self.weights.removeprefix(SOURCE_PREFIX)
            check(source in registry.PRETRAIN_SOURCES, "backbone.weights", self.weights,
                  "source:<name> with a name among " + ", ".join(registry.PRETRAIN_SOURCES))
        if not entry.has_weights:  # nothing to load: whatever weights the defaults carry
            self.weights, self.bn_momentum = None, None
        if self.input_size is None:
            self.input_size = entry.default_input_size
        check(self.input_size >= entry.min_input_size, "backbone.input_size", self.input_size,
              f"at least {entry.min_input_size} for {self.name}")
        if self.bn_momentum is not None:
            check(0 <= self.bn_momentum < 1, "backbone.bn_momentum", self.bn_momentum,
                  "a float in [0, 1) or null to keep Keras' value")


@dataclass(kw_only=True)
class HeadConfig:
    """The new classifier on the pooled features; `name` picks the kind.

    `frozen_features_only`: the head is fitted once on frozen features (not a Keras layer)."""

    name: str
    frozen_features_only: ClassVar[bool] = False


@dataclass(kw_only=True)
class DenseHeadConfig(HeadConfig):
    """Keras layers: optional Dense(units, relu), dropout, softmax; trained with the trainer."""

    name: str = "dense"
    units: int
    dropout: float
    standardize: bool

    def __post_init__(self) -> None:
        check(self.units >= 0, "strategy.head.units", self.units, "0 (no hidden layer) or more")
        check(0 <= self.dropout < 1, "strategy.head.dropout", self.dropout, "a float in [0, 1)")


@dataclass(kw_only=True)
class LogregHeadConfig(HeadConfig):
    """scikit-learn linear probe: standardised features, logistic regression, C chosen on val."""

    name: str = "logreg"
    c_grid: list[float]
    max_iter: int
    frozen_features_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check(bool(self.c_grid) and all(c > 0 for c in self.c_grid), "strategy.head.c_grid",
              self.c_grid, "a non-empty list of positive inverse regularisation strengths")
        check(self.max_iter >= 1, "strategy.head.max_iter", self.max_iter, "at least 1")


@dataclass(kw_only=True)
class StrategyConfig:
    """Fields every strategy shares; each strategy class declares its own subclass."""

    name: str
    head: Any = None


PROTOCOLS = ("tune", "final")
"""data.protocol: tune (train on train, choose on val) or final (train on train+val)."""
DATA_LABELS = ("task", "group")
"""Data keys that name a dataset rather than decide its content."""


@dataclass(kw_only=True)
class DataConfig:
    """Where images come from and how the fixed val/test splits and nested train subsets are cut.

    Each data source declares its subclass beside its loader (tlbench/data/). `task` names the
    dataset in reports (a suite's task name; null: the source's name) and `group` is its suite
    group (VTAB-1k's natural, specialized, structured). `protocol` final trains on train+val (the
    run after tuning on val)."""

    name: str
    task: str | None
    group: str | None
    protocol: str
    train_size: str
    val_fraction: float
    test_fraction: float
    split_seed: int
    input_size: int | None

    def __post_init__(self) -> None:
        check(bool(TRAIN_SIZE_PATTERN.match(self.train_size)), "data.train_size",
              self.train_size, "a count per class (10), a total (total:500) or all")
        check(0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction, "in (0, 1)")
        check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "in (0, 1)")
        check(self.val_fraction + self.test_fraction < 1, "data.test_fraction",
              self.test_fraction, "val_fraction + test_fraction < 1")
        check_seed("data.split_seed", self.split_seed)
        check_choice("data.protocol", self.protocol, PROTOCOLS)

    def content_digest(self) -> str | None:
        """A digest of the files the source reads, where settings alone do not fix its content
        (a folder, an .npz); None where they do. Part of the run's identity."""
        return None


@dataclass(kw_only=True)
class TrainerConfig:
    """How every phase is fitted; `jit_compile` is "auto", true or false (Keras' compile)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    patience: int | None
    verbose: int
    threads: int | None
    deterministic: bool
    augment: bool
    precision: str
    jit_compile: Any

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "trainer.epochs", self.epochs, "at least 1")
        check(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "at least 1")
        check(self.lr > 0, "trainer.lr", self.lr, "a positive float")
        check_choice("trainer.optimizer", self.optimizer, OPTIMIZERS)
        check(self.patience is None or self.patience >= 1, "trainer.patience", self.patience,
              "null (no early stopping) or at least 1")
        check(self.verbose in (0, 1, 2), "trainer.verbose", self.verbose, "0, 1 or 2")
        check(self.threads is None or self.threads >= 1, "trainer.threads", self.threads,
              "null (all cores) or at least 1")
        check_choice("trainer.precision", self.precision, PRECISIONS)
        check(self.jit_compile == "auto" or isinstance(self.jit_compile, bool),
              "trainer.jit_compile", self.jit_compile, "auto, true or false")


@dataclass(kw_only=True)
class PretrainConfig:
    """How source checkpoints (backbone.weights=source:<name>) are trained, checked and cached."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    min_val_accuracy: float
    cache_dir: str | None

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "pretrain.epochs", self.epochs, "at least 1")
        check(self.batch_size >= 1, "pretrain.batch_size", self.batch_size, "at least 1")
        check(self.lr > 0, "pretrain.lr", self.lr, "a positive float")
        check(0 <= self.min_val_accuracy <= 1, "pretrain.min_val_accuracy",
              self.min_val_accuracy, "a float in [0, 1]")
        check_seed("pretrain.seed", self.seed)


@dataclass(kw_only=True)
class CacheConfig:
    """Reuse of decoded images and frozen computation across runs; never part of a run's
    identity."""

    enabled: bool
    dir: str | None
    fill_limit: int
    dtype: str

    def __post_init__(self) -> None:
        check(self.fill_limit >= 0, "cache.fill_limit", self.fill_limit, "0 or more")
        check_choice("cache.dtype", self.dtype, CACHE_DTYPES)


CACHE_DTYPES = ("float32", "float16")


MAX_EXPERIMENT_NAME = 500


@dataclass(kw_only=True)
class TrackingConfig:
    """Where runs are logged; never part of a run's identity (config_hash)."""

    uri: str | None
    experiment: str
    run_name: str
    resume: bool

    def __post_init__(self) -> None:
        check_experiment_name(self.experiment)
        check(bool(self.run_name.strip()), "tracking.run_name", self.run_name, "a name")


def check_experiment_name(name: object) -> None:
    """Raise unless `name` is an MLflow experiment name: 1 to MAX_EXPERIMENT_NAME characters,
    not all blank."""
    check(isinstance(name, str) and bool(name.strip()) and len(name) <= MAX_EXPERIMENT_NAME,
          "tracking.experiment", name,
          f"a name of 1 to {MAX_EXPERIMENT_NAME} characters (MLflow's limit)")


@dataclass(kw_only=True)
class RunConfig:
    """One benchmark run, fully typed and validated (the strategy checks what it needs)."""

    backbone: BackboneConfig
    strategy: StrategyConfig
    data: DataConfig
    trainer: TrainerConfig
    tracking: TrackingConfig
    pretrain: PretrainConfig
    cache: CacheConfig
    seed: int

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        strategy = registry.STRATEGIES[self.strategy.name]
        strategy.validate(self)
        weights = self.backbone.weights or ""
        if strategy.pretrained and weights.startswith(SOURCE_PREFIX):
            check(self.backbone.entry().normalized, "backbone.weights", weights,
                  f"null, imagenet or a weights file for {self.backbone.name}: it has no "
                  "normalisation layers and does not learn from random weights on a small "
                  "source (its checkpoint stays at chance)")


TYPED: dict[tuple[type, str, str], Any] = {}
"""Sections already built in this process, by schema, key and their JSON text (at most
TYPED_KEPT, the oldest dropped first)."""

TYPED_KEPT = 512


def typed(schema: type, section: object, key: str):
    """Merge one config section onto its dataclass schema and build it, as a one-line error. A
    section of plain data is built once per process and copied after (a sweep's jobs differ in
    few sections: a job's config in 3.6 ms instead of 10 ms, on 2 cores)."""
    try:
        memo = (schema, key, json.dumps(section, sort_keys=True))
    except TypeError:  # not plain data (an OmegaConf node): built each time
        return build_typed(schema, section, key)
    if memo not in TYPED:
        TYPED[memo] = build_typed(schema, section, key)
        while len(TYPED) > TYPED_KEPT:
            del TYPED[next(iter(TYPED))]
    return copy.deepcopy(TYPED[memo])


def build_typed(schema: type, section: object, key: str):
    """The dataclass of one config section merged onto its schema (see typed)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        where = f"{key}.{exc.full_key}" if getattr(exc, "full_key", None) else key
        message = str(exc).splitlines()[0]
        if "is not a ListConfig" in message:  # key=value where a list is expected
            raise TlbenchError(f"{where}={getattr(exc, 'value', None)!r} is invalid: expected a "
                               f"list, e.g. {where}=[{getattr(exc, 'value', '...')}].") from None
        raise TlbenchError(f"{where}: {message}") from None


def backbone_schema(name: str) -> type[BackboneConfig]:
    """The config class of a backbone: its own for a network read from a file."""
    if name in registry.FILE_BACKBONES:
        return registry.FILE_BACKBONES[name]
    return BackboneConfig


TOP_LEVEL_KEYS = ("backbone", "strategy", "data", "trainer", "tracking", "pretrain", "cache",
                  "seed", "dry_run")


def check_top_level_keys(raw: dict) -> None:
    """Refuse a top-level key tlbench does not read (`+seeds=3`: Hydra adds it, and it would be
    ignored), naming the closest key."""
    for key in sorted(set(raw) - set(TOP_LEVEL_KEYS)):
        close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise TlbenchError(f"{key}: not a tlbench config key, so it would change nothing; "
                           f"{hint}the top-level keys are {', '.join(TOP_LEVEL_KEYS)}.")


def parse_config(cfg: DictConfig | dict) -> RunConfig:
    """Turn Hydra's composed config into a validated RunConfig."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    raw.pop("hydra", None)
    check_top_level_keys(raw)
    strategy_class = registry.STRATEGIES[raw["strategy"].get("name")]
    head = raw["strategy"].pop("head", None) or {}
    strategy = typed(strategy_class.Config, raw["strategy"], "strategy")
    strategy.head = typed(registry.HEADS[head.get("name")].Config, head, "strategy.head")
    return RunConfig(
        backbone=typed(backbone_schema(raw["backbone"].get("name")), raw["backbone"],
                       "backbone"),
        strategy=strategy,
        data=typed(registry.SOURCES[raw["data"].get("name")].Config, raw["data"], "data"),
        trainer=typed(TrainerConfig, raw["trainer"], "trainer"),
        tracking=typed(TrackingConfig, raw["tracking"], "tracking"),
        pretrain=typed(PretrainConfig, raw["pretrain"], "pretrain"),
        cache=typed(CacheConfig, raw["cache"], "cache"),
        seed=raw["seed"],
    )


def packaged_defaults(group: str, option: str) -> dict:
    """The values of conf/<group>/<option>.yaml, or of the option registered in its place
    (following its defaults list), as a dict."""
    path = files("tlbench.conf") / group / f"{option}.yaml"
    node = OmegaConf.create(path.read_text() if path.is_file() else stored_option(group, option))
    merged = OmegaConf.create()
    for parent in node.pop("defaults", []):
        if parent != "_self_":
            merged = OmegaConf.merge(merged, packaged_defaults(group, parent))
    return OmegaConf.to_container(OmegaConf.merge(merged, node))


def stored_option(group: str, option: str) -> DictConfig:
    """An option registered in Hydra's ConfigStore when tlbench.conf is imported (backbones)."""
    from hydra.core.config_store import ConfigStore

    import tlbench.conf  # noqa: F401

    return ConfigStore.instance().load(f"{group}/{option}.yaml").node


def group_config(group: str, option: str, schema: type, /, **overrides: Any):
    """A typed config from a packaged YAML option plus overrides, outside Hydra (pretraining
    sources, tools and tests)."""
    return typed(schema, packaged_defaults(group, option) | overrides, group)
