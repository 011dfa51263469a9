"""TensorFlow Datasets (pip install 'tlbench[tfds]'), read from a prepared data dir."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from tlbench.config import DataConfig
from tlbench.data.source import (
    ImageSource,
    LabelledImages,
    note_upscaling,
    register,
    resize,
    short_reason,
    source_size,
    to_uint8,
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
    """A TFDS dataset's train (and val and test) splits: labels read at load, each image's
    encoded bytes only hashed and sized there; the images themselves are decoded and resized to
    the source size when a split needs them (`TfdsImages`)."""
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
    if cfg.image_key not in builder.info.features:
        raise TlbenchError(f"data.image_key={cfg.image_key!r} is not a feature of "
                           f"{cfg.dataset}; its features: {', '.join(builder.info.features)}.")
    where = data_dir or "TFDS' data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    splits = [cfg.train_split, cfg.val_split, cfg.test_split]
    splits = [split for split in splits if split]
    try:
        if cfg.download:
            builder.download_and_prepare()
        datasets = [encoded_examples(builder, split, cfg.image_key) for split in splits]
        shard_paths = {os.path.basename(instruction.filename): os.fspath(instruction.filename)
                       for split in splits
                       for instruction in builder.info.splits[split].file_instructions}
    except Exception as exc:  # noqa: BLE001 - TFDS raises AssertionError, ValueError, network errors
        hint = ("prepare it on a connected machine (tfds build "
                f"{cfg.dataset} --data_dir DIR) and copy DIR here, or set data.download=true"
                if not cfg.download else "check the network, or prepare it elsewhere and copy it")
        raise TlbenchError(f"data.dataset={cfg.dataset}: split {'+'.join(splits)} is not "
                           f"prepared in {where} ({short_reason(exc)}); {hint}.") from None
    class_names, label_of = labelling(builder, cfg)
    size = source_size(cfg)
    digest = hashlib.sha256(f"tfds {size} {cfg.image_scale}".encode())
    records, labels, counts, small, smallest = [], [], [], 0, None
    for dataset in datasets:
        counts.append(0)
        for example in tfds.as_numpy(dataset):
            encoded = example[cfg.image_key]
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
            width, height = encoded_size(encoded)
            if min(width, height) < size:
                small += 1
                smallest = min(smallest or (width, height), (width, height), key=min)
            records.append(example["tfds_id"].decode().rsplit("__", 1))
            labels.append(label_of(example))
            counts[-1] += 1
    note_upscaling(f"tfds {cfg.dataset}", small, len(labels), smallest or (0, 0), size)
    images = TfdsImages(Records.at(records, shard_paths, builder.info.file_format),
                        builder.info.features[cfg.image_key], cfg.image_key, cfg.image_scale,
                        size, digest.hexdigest())
    bounds = np.cumsum(counts)
    given_test = np.arange(bounds[-2], bounds[-1]) if cfg.test_split else None
    given_val = np.arange(bounds[0], bounds[1]) if cfg.val_split else None
    return LabelledImages(images, np.asarray(labels, np.int64), class_names, given_test,
                          given_val)


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


def encoded_examples(builder, split: str, image_key: str):
    """The split's examples in TFDS' order, each with its `tfds_id` (shard file and index in it,
    where it is read back from); data.image_key and every other image feature left encoded
    (labels never need them)."""
    import tensorflow_datasets as tfds

    images = [key for key, feature in builder.info.features.items()
              if isinstance(feature, tfds.features.Image)]
    decoders = {key: tfds.decode.SkipDecoding() for key in {image_key, *images}}
    with quiet_tensorflow():  # tfds_id's counter is deprecated in TensorFlow, said once per split
        return builder.as_dataset(split=split, decoders=decoders,
                                  read_config=tfds.ReadConfig(add_tfds_id=True))


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """TensorFlow's Python warnings (the `tensorflow` logger) held back inside the block."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def encoded_size(encoded: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image, read from its header by Pillow (nothing decoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        return image.size


def rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) grey or (H, W, 3|4) as (H, W, 3): grey repeated, alpha dropped."""
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    return image[..., :3]


@dataclass
class Records:
    """Each position's serialized example: its TFRecord shard and index there, read back by
    position through an index of the shard's record offsets (built on first use)."""

    paths: list[str]
    shard: np.ndarray
    index: np.ndarray
    offsets: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def at(cls, ids: list[list[str]], shard_paths: dict[str, str], file_format) -> Records:
        """The records named by TFDS ids ([shard file, index] per position)."""
        format_name = getattr(file_format, "value", str(file_format))
        if format_name != "tfrecord":
            raise TlbenchError(f"data=tfds reads datasets prepared as tfrecord (TFDS' default); "
                               f"this one is {format_name}: prepare it again with tfds build "
                               "--file_format=tfrecord.")
        names = sorted({name for name, _ in ids})
        number = {name: i for i, name in enumerate(names)}
        shard = np.array([number[name] for name, _ in ids], np.int32)
        index = np.array([int(i) for _, i in ids], np.int64)
        return cls([shard_paths[os.path.basename(name)] for name in names], shard, index)

    def read(self, positions: np.ndarray) -> list[bytes]:
        """The serialized examples at `positions`, in their order. A TFRecord record is a
        little-endian uint64 length, its CRC (4 bytes), the data and the data's CRC (4 bytes)."""
        import tensorflow as tf

        records, shards = [b""] * len(positions), self.shard[positions]
        for shard in np.unique(shards).tolist():
            if shard not in self.offsets:
                self.offsets[shard] = tfrecord_offsets(self.paths[shard])
            where = np.flatnonzero(shards == shard)
            with tf.io.gfile.GFile(self.paths[shard], "rb") as handle:
                for i, offset in zip(where.tolist(),
                                     self.offsets[shard][self.index[positions[where]]].tolist(),
                                     strict=True):
                    handle.seek(offset)
                    records[i] = handle.read(struct.unpack("<Q", handle.read(12)[:8])[0])
        return records


def tfrecord_offsets(path: str) -> np.ndarray:
    """The byte offset of every record of a TFRecord file, from the records' length fields."""
    import tensorflow as tf

    offsets, offset = [], 0
    with tf.io.gfile.GFile(path, "rb") as handle:
        while header := handle.read(12):
            offsets.append(offset)
            offset += 12 + struct.unpack("<Q", header[:8])[0] + 4
            handle.seek(offset)
    return np.asarray(offsets, np.int64)


class TfdsImages(ImageSource):
    """A TFDS split's images, read by position from its prepared files and decoded there as
    TFDS decodes them (the dataset's Image feature), scaled by data.image_scale, made RGB and
    resized to the source size as data=tfds always did, rounded to uint8."""

    def __init__(self, records: Records, feature, image_key: str, scale: int, size: int,
                 digest: str) -> None:
        self.records, self.feature, self.image_key = records, feature, image_key
        self.scale, self.size, self.digest = scale, size, digest

    def __len__(self) -> int:
        return len(self.records.shard)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.atleast_1d(np.asarray(positions, np.int64))
        out = np.empty((len(positions), self.size, self.size, 3), np.float32)
        for i, image in enumerate(self.decoded(positions)):
            out[i] = to_uint8(resize(rgb(image * np.uint8(self.scale))[None], self.size)[0])
        return out

    def decoded(self, positions: np.ndarray) -> Iterator[np.ndarray]:
        """The images at `positions` at their own size, decoded in parallel by tf.data."""
        import tensorflow as tf

        encoded = [tf.train.Example.FromString(record).features.feature[self.image_key]
                   .bytes_list.value[0] for record in self.records.read(positions)]
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, tf.string)) \
            .map(self.feature.decode_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(8)
        yield from dataset.as_numpy_iterator()

    def fingerprint(self) -> str:
        """sha256 of every image's encoded bytes, with the source size and data.image_scale."""
        return self.digest


register("tfds", TfdsConfig, load_tfds_images)
