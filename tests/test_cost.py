"""Multiply-adds counted from the network agree with a hand count and the published figures."""

from __future__ import annotations

import pytest

from tlbench import registry
from tlbench.backbone.cost import multiply_adds

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_by_hand(size: int) -> int:
    """3x3 convolutions, 'same' padding, a 2x2 pool after each block."""
    total, channels, side = 0, 3, size
    for width, convs in VGG16_BLOCKS:
        for _ in range(convs):
            total += side * side * width * 9 * channels
            channels = width
        side //= 2
    return total


@pytest.mark.parametrize("size", [32, 224])
def test_vgg16_matches_a_hand_count(size):
    base = registry.BACKBONES["vgg16"].build((size, size, 3))
    assert multiply_adds(base, size) == vgg16_by_hand(size)


@pytest.mark.parametrize(("name", "published"), [
    ("resnet50", 3.86e9), ("mobilenetv2", 0.30e9), ("efficientnetb0", 0.39e9),
    ("densenet121", 2.87e9)])
def test_headless_networks_match_their_papers_at_224(name, published):
    base = registry.BACKBONES[name].build((224, 224, 3))
    assert multiply_adds(base, 224) == pytest.approx(published, rel=0.03)


def test_the_pixel_floor_costs_nothing():
    assert multiply_adds(registry.BACKBONES["pixels"].build((32, 32, 3)), 32) == 0
