"""Strategies: how a backbone is adapted, one class each, registered by name.

A new strategy is one module here (a config dataclass and a `Strategy` subclass registered with
`@registry.STRATEGIES.entry(name)`), imported below, plus one YAML in conf/strategy/.
"""

from __future__ import annotations

from tlbench import registry
from tlbench.config import RunConfig
from tlbench.strategy import (  # noqa: F401
    bitfit,
    feature_extraction,
    full_retrain,
    gradual_unfreeze,
    heads,
    lora,
    lp_ft,
    partial_finetune,
)
from tlbench.strategy.base import Route, Strategy, head_layers, with_head

__all__ = ["Route", "Strategy", "for_run", "head_layers", "with_head"]


def for_run(config: RunConfig) -> Strategy:
    """The configured strategy object."""
    return registry.STRATEGIES[config.strategy.name](config.strategy)
