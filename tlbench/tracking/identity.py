"""Run identity: the params a run logs and the `config_hash` that resume and the report key on.

A run's params are its effective config: what it ran with (backbone.weights as loaded: `null`
for the scratch control and weightless backbones), minus where things are stored and keys that
change nothing (trainer.verbose; keras_file's backbone.imports, where its classes are found),
plus `cut_dtype` where cached cut activations are kept as float16 (cache.dtype).
Its config_hash adds the content behind path-valued settings (the data files of folder and npz
sources, a weights file, a .keras model or KerasHub preset) and leaves out the pretraining
settings where no source checkpoint is used, so a run is redone when its inputs change and not
duplicated when a setting has no effect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from tlbench import registry, runtime
from tlbench.backbone import weights_kind
from tlbench.config import DATA_LABELS, RunConfig
from tlbench.paths import sha256_of

IDENTITY_VERSION = 3
"""Version 1 hashed path strings and every key; version 2's runs trained on float32 pixels
(version 3 on uint8 pixels from the decoded-image cache, whose rounding moves the numbers a
little): neither is resumed by version 3."""


def effective_weights(config: RunConfig) -> str | None:
    """What the run's base starts from: backbone.weights, unless the strategy or the backbone
    takes none."""
    strategy = registry.STRATEGIES[config.strategy.name](config.strategy)
    return strategy.weights(config.backbone.entry(), config.backbone.weights)


def identity(config: RunConfig) -> dict:
    """The effective config as a nested dict: the run's params."""
    values = dataclasses.asdict(config)
    for key in ("tracking", "cache"):
        values.pop(key)
    if config.cache.dtype != "float32" and cuts_cached(config):
        values["cut_dtype"] = config.cache.dtype  # float16 cut activations: other numbers
    values["pretrain"].pop("cache_dir")
    values["trainer"].pop("verbose")
    values["backbone"].pop("imports", None)  # keras_file: where its classes are, not the network
    values["backbone"]["weights"] = effective_weights(config)
    for label in DATA_LABELS:  # a suite's task name and group; absent, as before suites
        if values["data"][label] is None:
            values["data"].pop(label)
    if values["data"]["protocol"] == "tune":  # the default: absent, as before protocols
        values["data"].pop("protocol")
    values["keras_backend"] = runtime.backend()
    return values


def cuts_cached(config: RunConfig) -> bool:
    """Whether the run trains on cached activations at a cut (whose dtype cache.dtype sets)."""
    strategy = registry.STRATEGIES[config.strategy.name](config.strategy)
    return strategy.route(config, config.backbone.entry()).inputs == "cut"


def content(config: RunConfig) -> dict[str, str | None]:
    """Digests of what path-valued settings point at: the data, a weights file and the file a
    network is read from (backbone=keras_file, kerashub)."""
    weights = effective_weights(config)
    path = weights if weights_kind(weights) == "file" else None
    digests = {"data": config.data.content_digest(),
               "weights": sha256_of(path) if path and _is_file(path) else None}
    network = config.backbone.content_digest()
    return digests | ({"backbone": network} if network else {})  # registered ones: as before


def _is_file(path: str) -> bool:
    return Path(path).expanduser().is_file()


def config_hash(config: RunConfig, values: dict | None = None) -> str:
    """The hash of the values that decide the result (identity(config) unless given): the
    content behind paths added, pretraining settings dropped unless a source checkpoint is
    used."""
    values = dict(identity(config) if values is None else values)
    if weights_kind(effective_weights(config)) != "source":
        values.pop("pretrain", None)
    return values_hash(values | {"content": content(config), "identity": IDENTITY_VERSION})


def values_hash(values: dict) -> str:
    """A stable short hash of an identity dict."""
    canonical = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict as dotted keys with string values, as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = "null" if value is None else str(value)
    return flat
