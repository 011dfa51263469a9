"""Every registered backbone is a `backbone=<name>` option derived from its entry's facts."""

from __future__ import annotations

import pytest

from tlbench import registry
from tlbench.backbone import options
from tlbench.config import BackboneConfig, group_config

from .conftest import compose_config


def test_every_registered_backbone_is_an_option():
    assert sorted(options.options()) == sorted(registry.BACKBONES)


@pytest.mark.parametrize(
    ("name", "input_size", "bn_momentum"),
    [
        ("mobilenetv2", 32, 0.9),  # the data's size (digits: 32)
        ("inceptionv3", 75, 0.9),  # its minimum, from the catalog
        ("xception", 71, 0.9),
        ("vgg16", 32, None),  # no BatchNorm: the catalog's normalized=False
        ("pixels", 32, None),  # no weights
    ],
)
def test_options_follow_the_entry_facts(name, input_size, bn_momentum):
    backbone = compose_config([f"backbone={name}"]).backbone
    assert (backbone.name, backbone.input_size, backbone.bn_momentum) == (
        name,
        input_size,
        bn_momentum,
    )
    assert backbone.weights == "source:digits04"  # config.yaml's default over the option's null


def test_an_option_reads_outside_hydra_as_a_packaged_yaml_does():
    config = group_config("backbone", "inceptionv3", BackboneConfig)
    assert (config.input_size, config.bn_momentum, config.weights) == (75, 0.9, None)
