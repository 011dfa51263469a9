"""Full retraining, and the scratch control: every layer trains."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import registry
from tlbench.config import StrategyConfig
from tlbench.strategy.base import Phase, Plan, Strategy, unfreeze_all, with_head


@dataclass(kw_only=True)
class FullRetrainConfig(StrategyConfig):
    """Everything trainable, starting from the backbone's weights."""


@registry.STRATEGIES.entry("full_retrain")
class FullRetrain(Strategy):
    """Train every layer from the backbone's weights at trainer.lr.

    BatchNorm: follows fit's mode (training mode while fitting, moving statistics updated).
    """

    name = "full_retrain"
    Config = FullRetrainConfig

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """One phase, the whole network trainable."""
        model = with_head(base, n_classes, self.config.head, base_training=None,
                          augment=trainer.augment)
        return Plan(model, [Phase("all", trainer.epochs, trainer.lr, unfreeze_all(base))])


@dataclass(kw_only=True)
class ScratchConfig(StrategyConfig):
    """The control: random initialisation, everything trainable."""


@registry.STRATEGIES.entry("scratch")
class Scratch(FullRetrain):
    """The control: full retraining from random weights, whatever backbone.weights says."""

    name = "scratch"
    Config = ScratchConfig
    pretrained = False
