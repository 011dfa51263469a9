"""Backbone registry: each entry binds its constructor, preprocessing, input range and sizes, its
ImageNet file, and stages derived from the network (output strides 2..32: stages 1..5).

`spec` defines an entry, `catalog` registers them, `stages` derives stages from a built model,
`loading` builds a base with its weights and unfreezes its top stages. `custom` (your .keras
model) and `hub` (a KerasHub preset) measure an entry on the network their file holds
(`derived`): the run's entry is `config.backbone.entry()`.
"""

from tlbench import registry
from tlbench.backbone import catalog, custom, hub  # noqa: F401  (register the entries)
from tlbench.backbone.loading import (
    build_base,
    imagenet_path,
    keras_models_dir,
    on_pixels,
    preprocess,
    set_bn_momentum,
    sha256_of,
    unfreeze_top,
    weights_kind,
    weights_sha256,
)
from tlbench.backbone.spec import BackboneSpec
from tlbench.backbone.stages import stages_of, strides_of

BACKBONES = registry.BACKBONES
NETWORKS = {name: spec for name, spec in BACKBONES.items() if spec.has_weights}
"""The backbones with pretrained weights, stages and ImageNet files."""

__all__ = ["BACKBONES", "NETWORKS", "BackboneSpec", "build_base", "imagenet_path",
           "keras_models_dir", "on_pixels", "preprocess", "set_bn_momentum", "sha256_of",
           "stages_of", "strides_of", "unfreeze_top", "weights_kind", "weights_sha256"]
