"""BitFit (Ben Zaken et al. 2022): only the base's biases and normalisation scale and offset train,
with the new head."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import registry
from tlbench.config import StrategyConfig
from tlbench.strategy.base import Phase, Plan, Strategy, with_head

BIAS_TERMS = frozenset({"bias", "gamma", "beta"})
"""Keras' names of a layer's bias and of a normalisation layer's scale and offset."""


@dataclass(kw_only=True)
class BitFitConfig(StrategyConfig):
    """Biases, normalisation scale/offset and the head train; every kernel stays frozen."""


@registry.STRATEGIES.entry("bitfit")
class BitFit(Strategy):
    """One phase at trainer.lr: the head, every bias of the base and every normalisation layer's
    scale (gamma) and offset (beta) train; kernels stay frozen.

    BatchNorm: inference mode (the base is called with training=False): its gamma and beta train,
    its moving mean and variance stay those of the pretrained base. On images: every stage has
    biases or BatchNorm, so nothing is frozen whole to cache.
    """

    name = "bitfit"
    Config = BitFitConfig

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """The base inside the model in inference mode, its bias terms and the head trainable."""
        model = with_head(base, n_classes, self.config.head, base_training=False,
                          augment=trainer.augment)
        return Plan(model, [Phase("bitfit", trainer.epochs, trainer.lr, only_bias_terms(base))])


def only_bias_terms(base):
    """A phase action: every layer trainable, but of its variables only the bias terms."""
    def action() -> None:
        base.trainable = True
        for variable in base.weights:
            variable.trainable = variable.trainable and variable.name in BIAS_TERMS

    return action
