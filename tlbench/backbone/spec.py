"""What a backbone entry is: its constructor, preprocessing, input sizes, ImageNet file and stages.

Stages are the network's resolution levels, found from the network itself (tlbench.backbone.stages):
`stages` lists the output strides an entry's stages sit at (a test checks them against the
derived ones), and `stages_in(base)` maps a built base's layers to their stages.
Keras is imported lazily: an entry is static facts, cheap enough to validate configs with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

FIVE_STAGES = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build, feed and partially unfreeze it, and what it can do.

    `build(input_shape, weights)` makes the headless network (weights None: random; "imagenet":
    through Keras' cache); `preprocess(images)` maps RGB in [0, 255] to `preprocessed_range`
    (`preprocessing` names it for tables). `stages`: the output strides of its stages, bottom to
    top. `cut_at_one_tensor`: the part below any stage is reachable through one tensor (false for
    NASNet, whose cells take two). Capabilities: `has_weights` (pretrained weights can be loaded
    and its BatchNorm tuned), `trainable` (it has layers a strategy can train), `features`
    ("pooled": global average of the last feature map; "flat": the output flattened).
    `normalized`: it has normalisation layers (BatchNorm, LayerNorm, GroupNorm), so it learns
    from random weights at the pretraining settings (backbone.weights=source:<name>); VGG has none
    and its source checkpoint stays at chance, so that is refused up front (a test checks the
    flag against each network). `load_weights(model, path)` loads a weights file where Keras'
    model.load_weights cannot (a saved .keras model's own weights into its headless part); None:
    model.load_weights.
    """

    name: str
    build: Callable[..., Any]
    preprocess: Callable[[np.ndarray], np.ndarray]
    preprocessed_range: tuple[float, float]
    default_input_size: int
    min_input_size: int
    family: str = ""
    preprocessing: str = ""
    stages: tuple[int, ...] = FIVE_STAGES
    imagenet_template: str = ""
    imagenet_sizes: tuple[int, ...] = ()
    cut_at_one_tensor: bool = True
    features: str = "pooled"
    has_weights: bool = True
    trainable: bool = True
    normalized: bool = True
    load_weights: Callable[[Any, Any], None] | None = None

    def imagenet_file(self, input_size: int) -> str:
        """The headless ImageNet file Keras caches in $KERAS_HOME/models for this input size."""
        rows = input_size if input_size in self.imagenet_sizes else 224
        return self.imagenet_template.format(rows=rows)

    def stages_in(self, model) -> dict[str, int]:
        """{layer name: 1-based stage} for a base built from this entry (derived once per entry,
        tlbench/backbone/stages.py); empty for a backbone without stages."""
        from tlbench.backbone.stages import stages_of

        return stages_of(model, self.name) if self.stages else {}


def application(constructor: str) -> Callable[..., Any]:
    """A builder for a headless keras.applications network (random or ImageNet weights)."""
    def build(input_shape: tuple[int, int, int], weights: str | None = None):
        import keras

        return getattr(keras.applications, constructor)(include_top=False, weights=weights,
                                                        input_shape=input_shape)

    return build


def preprocess_input(module: str) -> Callable[[np.ndarray], np.ndarray]:
    """keras.applications.<module>.preprocess_input, applied to a copy of the images (a NumPy
    array, or a backend tensor inside the model)."""
    def preprocess(images):
        import keras

        copy = images.copy() if isinstance(images, np.ndarray) else images
        return getattr(keras.applications, module).preprocess_input(copy)

    return preprocess


def unchanged(images: np.ndarray) -> np.ndarray:
    """No preprocessing: the network takes [0, 255] RGB and rescales inside."""
    return images
