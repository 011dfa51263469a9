"""Strategies: how a backbone is adapted, each written as the Keras transfer-learning guide has it.

A strategy returns a Plan: the model plus its training phases. Each phase sets `trainable` flags
before the trainer (re)compiles the model, so a change of flags always takes effect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from tlbench.backbone import BackboneSpec, unfreeze_top
from tlbench.config import HeadConfig, StrategyConfig, TrainerConfig


@dataclass
class Phase:
    """One compile-and-fit step: its epochs, its learning rate and the trainable flags it needs."""

    name: str
    epochs: int
    lr: float
    set_trainable: Callable[[], None]


@dataclass
class Plan:
    """A model ready to train in phases."""

    model: keras.Model
    phases: list[Phase]


def with_head(base: keras.Model, n_classes: int, head: HeadConfig, base_training: bool | None):
    """Stack the new classifier on the base; base_training=False keeps BatchNorm in inference."""
    inputs = keras.Input(shape=base.input_shape[1:])
    x = base(inputs, training=base_training)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if head.units:
        x = keras.layers.Dense(head.units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(head.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head_softmax")(x)
    return keras.Model(inputs, outputs)


def _freeze(base: keras.Model) -> Callable[[], None]:
    """A phase action that freezes the whole base."""

    def freeze() -> None:
        base.trainable = False

    return freeze


def _unfreeze_all(base: keras.Model) -> Callable[[], None]:
    """A phase action that makes every layer of the base trainable."""

    def unfreeze() -> None:
        base.trainable = True

    return unfreeze


def feature_extraction(base, spec, n_classes, cfg, trainer) -> Plan:
    """Freeze the base, run it in inference mode and train only a new head."""
    model = with_head(base, n_classes, cfg.head, base_training=False)
    return Plan(model, [Phase("head", trainer.epochs, trainer.lr, _freeze(base))])


def partial_finetune(base, spec, n_classes, cfg, trainer) -> Plan:
    """Train the head on the frozen base, then unfreeze the top stages at lr x lr_scale.

    The base is called with training=False, so BatchNorm stays in inference mode in both phases.
    """
    model = with_head(base, n_classes, cfg.head, base_training=False)

    def unfreeze_top_stages() -> None:
        unfreeze_top(base, spec, cfg.unfreeze_blocks, cfg.unfreeze_fraction)

    return Plan(model, [
        Phase("head", cfg.head_epochs or trainer.epochs, trainer.lr, _freeze(base)),
        Phase("finetune", cfg.finetune_epochs or trainer.epochs, trainer.lr * cfg.lr_scale,
              unfreeze_top_stages),
    ])


def full_retrain(base, spec, n_classes, cfg, trainer) -> Plan:
    """Train every layer, starting from the backbone's weights; BatchNorm follows fit's mode."""
    model = with_head(base, n_classes, cfg.head, base_training=None)
    return Plan(model, [Phase("all", trainer.epochs, trainer.lr, _unfreeze_all(base))])


STRATEGIES: dict[str, Callable[..., Plan]] = {
    "feature_extraction": feature_extraction,
    "partial_finetune": partial_finetune,
    "full_retrain": full_retrain,
    "scratch": full_retrain,
}


def uses_pretrained_weights(strategy_name: str) -> bool:
    """The scratch control always starts from random weights, whatever backbone.weights says."""
    return strategy_name != "scratch"


def build_plan(base: keras.Model, spec: BackboneSpec, n_classes: int, cfg: StrategyConfig,
               trainer: TrainerConfig) -> Plan:
    """The model and phases for the configured strategy."""
    return STRATEGIES[cfg.name](base, spec, n_classes, cfg, trainer)
