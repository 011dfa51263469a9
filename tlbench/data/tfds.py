"""TensorFlow Datasets (pip install 'tlbench[tfds]'), read from a prepared data dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import (
    ArrayImages,
    LabelledImages,
    note_upscaling,
    register,
    resize,
    short_reason,
    source_size,
)
from tlbench.data.vtab import DERIVED_LABELS
from tlbench.errors import TlbenchError, check


@dataclass(kw_only=True)
class TfdsConfig(DataConfig):
    """A TensorFlow Datasets dataset (`pip install 'tlbench[tfds]'`), prepared in `data_dir`.

    `test_split` null carves the test split from `train_split` like the other sources do.
    """

    dataset: str | None
    train_split: str
    val_split: str | None
    test_split: str | None
    data_dir: str | None
    download: bool
    image_key: str
    label_key: str
    derived_label: str | None
    image_scale: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.dataset), "data.dataset", self.dataset,
               "a TFDS dataset name such as tf_flowers or cifar10 (optionally name:version)")
        check(self.val_split is None or self.test_split is not None, "data.val_split",
              self.val_split, "null unless data.test_split is set too")
        check(self.derived_label is None or self.derived_label in DERIVED_LABELS,
              "data.derived_label", self.derived_label, "null or one of " + ", ".join(
                  DERIVED_LABELS))


def load_tfds_images(cfg: TfdsConfig) -> LabelledImages:
    """A TFDS dataset's train (and val and test) splits, resized to the source size once, held
    as uint8."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise TlbenchError("data=tfds needs TensorFlow Datasets and TensorFlow (on any Keras "
                           "backend): pip install 'tlbench[tfds]'.") from None
    data_dir = os.path.expanduser(cfg.data_dir) if cfg.data_dir else None
    try:
        builder = tfds.builder(cfg.dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise TlbenchError(
            f"data.dataset={cfg.dataset!r} is not a TFDS dataset; see "
            "https://www.tensorflow.org/datasets/catalog or python -c \"import "
            "tensorflow_datasets as tfds; print(tfds.list_builders())\".") from None
    where = data_dir or "TFDS' data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    splits = [cfg.train_split, cfg.val_split, cfg.test_split]
    splits = [split for split in splits if split]
    try:
        if cfg.download:
            builder.download_and_prepare()
        datasets = [builder.as_dataset(split=split) for split in splits]
    except Exception as exc:  # noqa: BLE001 - TFDS raises AssertionError, ValueError, network errors
        hint = ("prepare it on a connected machine (tfds build "
                f"{cfg.dataset} --data_dir DIR) and copy DIR here, or set data.download=true"
                if not cfg.download else "check the network, or prepare it elsewhere and copy it")
        raise TlbenchError(f"data.dataset={cfg.dataset}: split {'+'.join(splits)} is not "
                           f"prepared in {where} ({short_reason(exc)}); {hint}.") from None
    class_names, label_of = labelling(builder, cfg)
    size = source_size(cfg)
    images, labels, counts, small, smallest = [], [], [], 0, None
    for dataset in datasets:
        counts.append(0)
        for example in tfds.as_numpy(dataset):
            image = example[cfg.image_key] * np.uint8(cfg.image_scale)
            if image.ndim == 2 or image.shape[-1] == 1:
                image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
            if min(image.shape[:2]) < size:
                small += 1
                smallest = min(smallest or image.shape[1::-1], image.shape[1::-1], key=min)
            images.append(resize(image[None, ..., :3], size)[0].round().astype(np.uint8))
            labels.append(label_of(example))
            counts[-1] += 1
    note_upscaling(f"tfds {cfg.dataset}", small, len(images), smallest or (0, 0), size)
    bounds = np.cumsum(counts)
    given_test = np.arange(bounds[-2], bounds[-1]) if cfg.test_split else None
    given_val = np.arange(bounds[0], bounds[1]) if cfg.val_split else None
    return LabelledImages(ArrayImages(np.stack(images)), np.asarray(labels, np.int64),
                          class_names, given_test, given_val)


def labelling(builder, cfg: TfdsConfig) -> tuple[tuple[str, ...], Callable[[dict], int]]:
    """The class names and the label of an example: data.derived_label (a VTAB label computed
    from the example), else the ClassLabel feature data.label_key."""
    if cfg.derived_label:
        derived = DERIVED_LABELS[cfg.derived_label]
        return derived.classes, derived.compute
    if cfg.label_key not in builder.info.features:
        raise TlbenchError(f"data.label_key={cfg.label_key!r} is not a feature of "
                           f"{cfg.dataset}; its features: {', '.join(builder.info.features)}.")
    feature = builder.info.features[cfg.label_key]
    names = tuple(getattr(feature, "names", None) or [str(i) for i in range(feature.num_classes)])
    return names, lambda example: int(example[cfg.label_key])


register("tfds", TfdsConfig, load_tfds_images)
