"""`backbone=<name>` for every registered backbone, derived from its entry: no YAML per network.

Hydra offers each entry of registry.BACKBONES as an option of the `backbone` group (its
ConfigStore, as `+sweep=` options are): weights null (random init; config.yaml's default is
source:digits04), the data's input size (the entry's minimum where that is above Keras' 32-pixel
floor: smaller images are upscaled to it), and BatchNorm momentum 0.9 where the network has
normalisation layers and weights to tune. Backbones with settings of their own (`keras_file`,
`kerashub`) keep their YAML in conf/backbone/.
"""

from __future__ import annotations

from tlbench import registry
from tlbench.backbone.spec import BackboneSpec

DATA_SIZE = "${data.input_size}"
KERAS_FLOOR = 32
BN_MOMENTUM = 0.9
"""Keras' default is 0.99; 0.9 lets small-data runs converge (`null` keeps Keras' value)."""


def option(spec: BackboneSpec) -> dict:
    """The `backbone` group's option for one registered entry."""
    return {
        "name": spec.name,
        "weights": None,
        "input_size": spec.min_input_size if spec.min_input_size > KERAS_FLOOR else DATA_SIZE,
        "bn_momentum": BN_MOMENTUM if spec.has_weights and spec.normalized else None,
    }


def options() -> dict[str, dict]:
    """Every registered backbone's option, by name."""
    return {name: option(spec) for name, spec in registry.BACKBONES.items()}


def register() -> None:
    """Offer every registered backbone as `backbone=<name>` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in options().items():
        store.store(group="backbone", name=name, node=node, provider="tlbench")
