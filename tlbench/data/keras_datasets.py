"""keras.datasets: cifar10, cifar100, mnist, fashion_mnist from (or into) Keras' cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import (
    ArrayImages,
    LabelledImages,
    note_upscaling,
    register,
    short_reason,
    source_size,
)
from tlbench.errors import TlbenchError, check_choice
from tlbench.paths import download_timeout, keras_home

KERAS_DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist")


@dataclass(kw_only=True)
class KerasConfig(DataConfig):
    """A keras.datasets dataset, read from (or downloaded into) `$KERAS_HOME/datasets`."""

    dataset: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("data.dataset", self.dataset, KERAS_DATASETS)


_CIFAR100_WORDS = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
        bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud
        cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl
        hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
        motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
        pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket
        rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
        sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
        turtle wardrobe whale willow_tree wolf woman worm"""
KERAS_CLASS_NAMES = {
    "mnist": tuple("0123456789"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "cifar100": tuple(_CIFAR100_WORDS.split()),
}
_KERAS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_FASHION = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
KERAS_FILES = {  # (what to download, where keras.datasets expects it under $KERAS_HOME/datasets)
    "mnist": (_KERAS_URL + "mnist.npz", "mnist.npz"),
    "fashion_mnist": (" ".join(_KERAS_URL + f for f in _FASHION), "fashion-mnist/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-batches-py-target_archive"),  # get_file(extract=True) names it so
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "cifar-100-python-target_archive"),
}


def keras_datasets_dir() -> Path:
    """Where keras.datasets caches downloads: $KERAS_HOME/datasets (default ~/.keras/datasets)."""
    return keras_home() / "datasets"


def load_keras_images(cfg: KerasConfig) -> LabelledImages:
    """cifar10, cifar100, mnist or fashion_mnist from keras.datasets: its train and test splits."""
    import keras

    try:
        with download_timeout():
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, cfg.dataset).load_data()
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception when offline
        urls, name = KERAS_FILES[cfg.dataset]
        target = f"{keras_datasets_dir() / name}" + ("/" if name.endswith("/") else "")
        raise TlbenchError(
            f"data.dataset={cfg.dataset}: not in the Keras cache and could not be downloaded "
            f"({short_reason(exc)}); on a connected machine download {urls} and copy "
            f"{'them into' if ' ' in urls else 'it to'} {target} (set KERAS_HOME to use another "
            "cache).") from None
    pixels = np.concatenate([x_train, x_test]).astype(np.uint8)
    labels = np.concatenate([y_train, y_test]).reshape(-1).astype(np.int64)
    size = source_size(cfg)
    if min(pixels.shape[1:3]) < size:
        note_upscaling(f"keras {cfg.dataset}", len(pixels), len(pixels),
                       pixels.shape[2:0:-1], size)
    return LabelledImages(ArrayImages(pixels, size), labels, KERAS_CLASS_NAMES[cfg.dataset],
                          np.arange(len(x_train), len(pixels)))


register("keras", KerasConfig, load_keras_images)
