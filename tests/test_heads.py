"""Each registered head is made one way (Keras layers, or a fit on frozen features), as its
config says, and strategies build it through its entry."""

from __future__ import annotations

import pytest

from tlbench import registry
from tlbench.config import DenseHeadConfig
from tlbench.strategy.base import head_layers


@pytest.mark.parametrize("name", list(registry.HEADS))
def test_every_head_is_made_one_way_as_its_config_says(name):
    head = registry.HEADS[name]
    assert (head.layers is None) != (head.fit is None)
    assert head.Config.frozen_features_only == (head.fit is not None)


@pytest.mark.parametrize(
    ("units", "standardize", "names"),
    [
        (4, True, ["head_standardize", "head_dense", "head_dropout", "head_softmax"]),
        (0, False, ["head_dropout", "head_softmax"]),
    ],
)
def test_the_dense_head_is_built_from_its_entry(units, standardize, names):
    config = DenseHeadConfig(units=units, dropout=0.1, standardize=standardize)
    model = head_layers(3, config)
    assert [layer.name for layer in model.layers] == names
    assert model.layers[-1].units == 3
