"""The heads a strategy puts on the pooled features, one registered entry each.

An entry binds the head's config class (`head=<name>`, its defaults in conf/head/<name>.yaml) to
how the head is made: Keras `layers`, trained by the trainer like the rest of the model, or a
`fit` on frozen features, done once (its config sets `frozen_features_only`). A new head is one
module registering its entry, imported in tlbench/strategy/__init__.py, plus its YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tlbench import registry
from tlbench.config import DenseHeadConfig, HeadConfig, LogregHeadConfig

STANDARDIZE = "head_standardize"
"""The name of the standardisation layer, adapted to the training split before fitting."""


@dataclass(frozen=True)
class Head:
    """A registered head: its config class, and its Keras layers or its fit on frozen features."""

    Config: type[HeadConfig]
    layers: Callable[[int, Any], Any] | None = None
    fit: Callable[..., Any] | None = None


def dense_layers(n_classes: int, head: DenseHeadConfig):
    """Standardisation (if asked; adapted to the training split by `Strategy.train`), optional
    Dense(units, relu), dropout, softmax."""
    import keras

    from tlbench.strategy.layers import Standardize, dropout

    layers = [Standardize(name=STANDARDIZE)] if head.standardize else []
    layers += (
        [keras.layers.Dense(head.units, activation="relu", name="head_dense")] if head.units else []
    )
    layers += [
        dropout(head.dropout, name="head_dropout"),
        keras.layers.Dense(n_classes, activation="softmax", name="head_softmax", dtype="float32"),
    ]  # float32 probabilities under mixed precision
    return keras.Sequential(layers, name="head")


def fit_logreg(features, head: LogregHeadConfig, base_params: float, seed: int):
    """The linear probe over the C grid, kept on validation (tlbench/training/train.py,
    train_logreg)."""
    from tlbench.training import train

    return train.train_logreg(features, head, base_params, seed)


registry.HEADS.register("dense", Head(DenseHeadConfig, layers=dense_layers))
registry.HEADS.register("logreg", Head(LogregHeadConfig, fit=fit_logreg))
