"""Data stage: load a registered source, cut fixed val/test splits and a nested train subset.

One module per source (its config class beside its loader, registered by name), `split` for the
splits and `materialise` for the in-memory arrays. A new source is one module plus one YAML in
conf/data/, imported here.
"""

from __future__ import annotations

from tlbench import registry
from tlbench.config import DataConfig
from tlbench.data import digits, folder, keras_datasets, npz, shapes, synthetic, tfds  # noqa: F401
from tlbench.data.materialise import Dataset, materialise, resize
from tlbench.data.source import ArrayImages, ImageSource, LabelledImages
from tlbench.data.split import Splits, fixed_splits, nested_subset, split_indices

__all__ = ["ArrayImages", "Dataset", "ImageSource", "LabelledImages", "Splits", "fixed_splits",
           "load_dataset", "load_source", "materialise", "nested_subset", "resize",
           "split_indices"]


def load_source(cfg: DataConfig) -> LabelledImages:
    """The configured source, whole (lazily, for sources that stream)."""
    return registry.SOURCES[cfg.name].load(cfg)


def load_dataset(cfg: DataConfig, input_size: int, seed: int) -> Dataset:
    """Load the configured source and cut this run's splits at the backbone's input size."""
    source = load_source(cfg)
    return materialise(source, split_indices(source, cfg, seed), input_size)
