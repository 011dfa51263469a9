"""Every data source on real files written here, and every kind of bad input the issue lists."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlbench import registry
from tlbench.data import load_dataset, load_source, split_indices
from tlbench.data.digits import load_digits_images
from tlbench.data.folder import load_folder_images
from tlbench.data.npz import load_npz_images
from tlbench.data.shapes import load_shapes_images
from tlbench.data.synthetic import load_synthetic_images
from tlbench.data.tfds import load_tfds_images
from tlbench.errors import TlbenchError

from .conftest import data_config


def write_image(path, size=12, mode="RGB", colour=(200, 30, 30), fmt=None):
    """A small real image file: a colour block plus a gradient, in the given PIL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = colour
    pixels[:, :, 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    image = Image.fromarray(pixels).convert(mode)
    image.save(path, format=fmt)
    return path


def image_folder(root, classes=("cat", "dog"), per_class=6, size=12, suffix=".png"):
    """root/<class>/<i><suffix>, one colour per class."""
    colours = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (200, 200, 20)]
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i:02d}{suffix}", size, colour=colours[c % 4])
    return root


def folder_cfg(path, **kwargs):
    return data_config("folder", path=str(path), input_size=kwargs.pop("input_size", 32),
                        **kwargs)


# --- folder --------------------------------------------------------------------------------------

def test_folder_classes_labels_and_lazy_rgb_images(tmp_path):
    image_folder(tmp_path, classes=("cat", "dog", "emu"), per_class=5)
    source = load_folder_images(folder_cfg(tmp_path))
    assert source.class_names == ("cat", "dog", "emu") and len(source.images) == 15
    assert np.bincount(source.labels).tolist() == [5, 5, 5] and source.given_test is None
    batch = source.images[np.array([0, 14])]
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.float32
    assert batch[0, ..., 0].mean() > 150 and batch[1, ..., 2].mean() > 100  # cat red, emu blue


def test_folder_fingerprint_follows_file_changes(tmp_path):
    image_folder(tmp_path)
    first = load_folder_images(folder_cfg(tmp_path)).fingerprint()
    assert load_folder_images(folder_cfg(tmp_path)).fingerprint() == first
    write_image(tmp_path / "dog" / "new.png")
    assert load_folder_images(folder_cfg(tmp_path)).fingerprint() != first


def test_folder_train_and_test_roots_keep_the_given_test_split(tmp_path):
    image_folder(tmp_path / "train", per_class=8)
    image_folder(tmp_path / "test", per_class=3)
    cfg = folder_cfg(tmp_path, train_size="2", val_fraction=0.25)
    source = load_folder_images(cfg)
    assert len(source.images) == 22 and source.given_test.tolist() == list(range(16, 22))
    splits = split_indices(source, cfg, 0)
    assert splits.test.tolist() == list(range(16, 22)) and len(splits.val) == 4
    assert not set(splits.train) & set(splits.test) and len(splits.train) == 4
    dataset = load_dataset(cfg, input_size=32, seed=0)
    assert len(dataset.y_test) == 6 and dataset.class_names == ("cat", "dog")


def test_other_folders_beside_train_and_test_are_ignored_with_a_warning(tmp_path, caplog):
    image_folder(tmp_path / "train")
    image_folder(tmp_path / "test", per_class=3)
    image_folder(tmp_path / "val", per_class=3)
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        source = load_folder_images(folder_cfg(tmp_path))
    assert len(source.images) == 18 and "ignoring val" in caplog.text


def test_train_and_test_roots_must_have_the_same_classes(tmp_path):
    image_folder(tmp_path / "train", classes=("cat", "dog"))
    image_folder(tmp_path / "test", classes=("cat", "emu"))
    with pytest.raises(TlbenchError, match="differ from those of"):
        load_folder_images(folder_cfg(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(TlbenchError, match=r"data.path='.*nowhere': no such folder"):
        load_folder_images(folder_cfg(tmp_path / "nowhere"))


def test_empty_folder_and_loose_files(tmp_path):
    with pytest.raises(TlbenchError, match="has no class sub-folders .it is empty."):
        load_folder_images(folder_cfg(tmp_path))
    write_image(tmp_path / "a.png")
    with pytest.raises(TlbenchError, match=r"1 files directly in it.*path/<class>"):
        load_folder_images(folder_cfg(tmp_path))


def test_class_folder_with_no_images(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlbenchError, match=r"class folder .*empty has no readable images"):
        load_folder_images(folder_cfg(tmp_path))


def bad_files(root):
    """A corrupt PNG, a truncated JPEG, a text file renamed .jpg and a stray non-image file."""
    good = write_image(root / "dog" / "ok.png", 64)
    (root / "dog" / "corrupt.png").write_bytes(good.read_bytes()[:40] + b"\0" * 200)
    jpeg = write_image(root / "dog" / "full.jpg", 64, fmt="JPEG").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cat" / "notes.jpg").write_text("not an image")
    (root / "cat" / "labels.csv").write_text("a,b\n")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored silently


def test_bad_files_are_skipped_with_one_warning(tmp_path, caplog):
    image_folder(tmp_path)
    bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        source = load_folder_images(folder_cfg(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 unreadable or non-image files" in warnings[0]
    assert np.bincount(source.labels).tolist() == [6, 8]  # dog: 6 + ok.png + full.jpg
    assert source.images[np.arange(14)].shape == (14, 32, 32, 3)


@pytest.mark.parametrize("check", ["header", "decode"])
def test_bad_files_are_refused_by_name_in_error_mode(tmp_path, check):
    image_folder(tmp_path)
    bad_files(tmp_path)
    with pytest.raises(TlbenchError, match=r"cat/labels.csv is not a readable image .not an image"):
        load_folder_images(folder_cfg(tmp_path, on_bad_file="error", check=check))
    (tmp_path / "cat" / "labels.csv").unlink()
    (tmp_path / "cat" / "notes.jpg").unlink()
    with pytest.raises(TlbenchError, match=r"dog/corrupt.png is not a readable image"):
        load_folder_images(folder_cfg(tmp_path, on_bad_file="error", check=check))
    (tmp_path / "dog" / "corrupt.png").unlink()
    with pytest.raises(TlbenchError, match=r"dog/truncated.jpg is not a readable image"):
        load_folder_images(folder_cfg(tmp_path, on_bad_file="error", check=check))


def test_single_class_is_refused(tmp_path):
    image_folder(tmp_path, classes=("only",))
    with pytest.raises(TlbenchError, match=r"only one class folder \(only\)"):
        load_folder_images(folder_cfg(tmp_path))


def test_fewer_images_of_a_class_than_train_size_asks(tmp_path):
    image_folder(tmp_path / "data", classes=("big",), per_class=30)
    image_folder(tmp_path / "data", classes=("small",), per_class=10)
    with pytest.raises(TlbenchError, match=r"class small has 7 images; use at most that"):
        load_dataset(folder_cfg(tmp_path / "data", train_size="8"), input_size=32, seed=0)


def test_a_class_too_small_for_train_val_and_test(tmp_path):
    image_folder(tmp_path, classes=("cat",), per_class=10)
    image_folder(tmp_path, classes=("tiny",), per_class=2)
    with pytest.raises(TlbenchError, match="class tiny has 2 images in the source"):
        load_dataset(folder_cfg(tmp_path), input_size=32, seed=0)


def test_grey_rgba_palette_and_rgb_images_mix(tmp_path):
    for i, mode in enumerate(["L", "RGBA", "P", "RGB", "LA", "I;16"]):
        write_image(tmp_path / "mixed" / f"{i}.png", 10, mode=mode)
        write_image(tmp_path / "rgb" / f"{i}.png", 10)
    for mode in ["L", "CMYK"]:
        write_image(tmp_path / "mixed" / f"jpeg_{mode}.jpg", 40, mode=mode, fmt="JPEG")
    source = load_folder_images(folder_cfg(tmp_path))
    images = source.images[np.arange(14)]
    assert images.shape == (14, 32, 32, 3) and images.min() >= 0 and images.max() <= 255
    grey = images[0]
    assert np.allclose(grey[..., 0], grey[..., 1]) and np.allclose(grey[..., 1], grey[..., 2])


def test_huge_image_is_decoded_straight_to_the_input_size(tmp_path):
    image_folder(tmp_path)
    huge = np.zeros((3000, 4000, 3), np.uint8)
    huge[:, :2000] = (250, 10, 10)
    Image.fromarray(huge).save(tmp_path / "cat" / "huge.png", compress_level=1)
    source = load_folder_images(folder_cfg(tmp_path))
    position = source.images.files.index(tmp_path / "cat" / "huge.png")
    image = source.images[np.array([position])]
    assert image.shape == (1, 32, 32, 3) and image.nbytes == 32 * 32 * 3 * 4
    assert image[0, :, :14, 0].mean() > 240 and image[0, :, 18:, 0].mean() < 15


def test_unicode_class_folder_names(tmp_path):
    image_folder(tmp_path, classes=("chat_été", "犬", "Ωmega"))
    source = load_folder_images(folder_cfg(tmp_path))
    assert source.class_names == ("chat_été", "Ωmega", "犬")
    assert load_dataset(folder_cfg(tmp_path, train_size="2"), 32, 0).class_names == \
        source.class_names


def test_images_smaller_than_the_input_size_are_upscaled_and_said_so(tmp_path, caplog):
    image_folder(tmp_path, size=8)
    with caplog.at_level(logging.INFO, logger="tlbench"):
        source = load_folder_images(folder_cfg(tmp_path, input_size=32))
    lines = [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()]
    assert len(lines) == 1 and "12 of 12 images are smaller than 32x32 (smallest 8x8)" in lines[0]
    assert source.images[np.array([0])].shape == (1, 32, 32, 3)


def test_file_that_passes_the_header_check_but_fails_to_decode(tmp_path):
    image_folder(tmp_path)
    good = write_image(tmp_path / "dog" / "big.png", 64).read_bytes()
    broken = bytearray(good)
    start = broken.index(b"IDAT") + 8  # damage the compressed data but fix nothing else
    broken[start:start + 20] = b"\xff" * 20
    (tmp_path / "dog" / "big.png").write_bytes(bytes(broken))
    # The CRC check in the header pass catches this one; a decode pass names it as well.
    with pytest.raises(TlbenchError, match="big.png is not a readable image"):
        load_folder_images(folder_cfg(tmp_path, on_bad_file="error"))
    with pytest.raises(TlbenchError, match="big.png is not a readable image"):
        load_folder_images(folder_cfg(tmp_path, on_bad_file="error", check="decode"))


def test_embedded_and_generated_sources_say_they_are_upscaled(caplog):
    with caplog.at_level(logging.INFO, logger="tlbench"):
        load_source(data_config("digits", input_size=32))
        load_source(data_config("synthetic", image_size=16, input_size=32))
    lines = [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()]
    assert lines == [
        "data digits: 1797 of 1797 images are smaller than 32x32 (smallest 8x8); they are "
        "upscaled to 32x32 when decoded (data.input_size)",
        "data synthetic: 1000 of 1000 images are smaller than 32x32 (smallest 16x16); they are "
        "upscaled to 32x32 when decoded (data.input_size)"]


# --- keras.datasets ------------------------------------------------------------------------------

def test_keras_dataset_not_cached_offline_names_the_cache_file(tmp_path):
    """A fresh KERAS_HOME (Keras reads it at import, hence the subprocess) and no network."""
    code = textwrap.dedent("""
        from tlbench.config import group_config
        from tlbench.data.keras_datasets import KerasConfig, load_keras_images
        from tlbench.errors import TlbenchError
        try:
            load_keras_images(group_config("data", "keras", KerasConfig, dataset="mnist"))
        except TlbenchError as exc:
            print("ERROR", exc)
    """)
    env = os.environ | {"KERAS_HOME": str(tmp_path / "keras"), "TF_CPP_MIN_LOG_LEVEL": "2",
                        "https_proxy": "http://127.0.0.1:9"}  # offline even on a connected host
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    line = next(x for x in result.stdout.splitlines() if x.startswith("ERROR"))
    assert "data.dataset=mnist: not in the Keras cache" in line
    assert f"copy it to {tmp_path / 'keras' / 'datasets' / 'mnist.npz'}" in line
    assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz" in line


# --- TensorFlow Datasets -------------------------------------------------------------------------

def test_unknown_tfds_name(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(TlbenchError, match=r"'no_such_set_xyz' is not a TFDS dataset; see"):
        load_tfds_images(data_config("tfds", dataset="no_such_set_xyz", data_dir=str(tmp_path)))


def test_tfds_dataset_not_prepared_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(TlbenchError, match=r"data.dataset=mnist: split train\+test is not "
                                           r"prepared in .*tfds build mnist"):
        load_tfds_images(data_config("tfds", dataset="mnist", data_dir=str(tmp_path)))


def test_tfds_prepared_dataset_loads_offline(tmp_path):
    """A real TFDS builder, prepared into tmp_path with no network, read back by the loader."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class TlbenchTinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1)),
                "label": tfds.features.ClassLabel(names=["dark", "light"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12, 0),
                    "test": self._generate_examples(4, 1)}

        def _generate_examples(self, n, offset):
            for i in range(n):
                label = i % 2
                yield f"{offset}-{i}", {"image": np.full((10, 14, 1), 40 + 170 * label, np.uint8),
                                        "label": label}

    TlbenchTinyShapes(data_dir=str(tmp_path)).download_and_prepare()
    source = load_tfds_images(data_config("tfds", dataset="tlbench_tiny_shapes",
                                         data_dir=str(tmp_path), input_size=32))
    assert source.class_names == ("dark", "light") and len(source.images) == 16
    assert source.given_test.tolist() == list(range(12, 16))
    images = source.images[np.arange(16)]
    assert images.shape == (16, 32, 32, 3)
    assert np.allclose(images[source.labels == 1].mean(), 210, atol=1)




@functools.cache
def mixed_shapes_builder():
    """A real TFDS builder class (registered once): 30 train and 7 test images of random sizes
    (some below 32 px), grey PNGs in `image` and RGB JPEGs in `photo`, labels by parity."""
    import tensorflow_datasets as tfds

    class TlbenchMixedShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1)),
                "photo": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["even", "odd"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0),
                    "test": self._generate_examples(7, 1)}

        def _generate_examples(self, n, offset):
            rng = np.random.default_rng(offset)
            for i in range(n):
                height, width = rng.integers(20, 60, 2)
                yield f"{offset}-{i}", {
                    "image": rng.integers(0, 256, (height, width, 1), np.uint8),
                    "photo": rng.integers(0, 256, (width, height, 3), np.uint8),
                    "label": i % 2}

    return TlbenchMixedShapes


def eager_pixels(builder, key, size):
    """What data=tfds held before it was lazy: every image of train then test decoded by TFDS,
    made RGB, resized to the source size and rounded to uint8, in TFDS' order."""
    import tensorflow_datasets as tfds

    from tlbench.data.source import resize

    images = []
    for split in ("train", "test"):
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            image = example[key]
            image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            images.append(resize(image[None], size)[0].round().astype(np.uint8))
    return np.stack(images)


def test_tfds_images_are_decoded_only_when_served_as_the_eager_loader_decoded_them(
        tmp_path, monkeypatch):
    """Loading reads labels and encoded bytes only; the images served by position (from 3
    shards, in TFDS' interleaved order) and the decoded-image cache filled from them are the
    pixels the loader held in memory before."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tlbench.data.source import resize, to_uint8

    builder = mixed_shapes_builder()(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=3))
    decodes = []
    image_decode = tfds.features.Image.decode_example
    monkeypatch.setattr(tfds.features.Image, "decode_example",
                        lambda feature, example: decodes.append(1) or image_decode(feature,
                                                                                   example))
    some = np.array([36, 0, 17, 5, 17])
    for key in ("image", "photo"):
        cfg = data_config("tfds", dataset="tlbench_mixed_shapes", data_dir=str(tmp_path / "tfds"),
                          image_key=key, input_size=32)
        source = load_tfds_images(cfg)
        assert not decodes  # TFDS' image decoder is not even traced while loading
        assert len(source.images) == 37 and source.given_test.tolist() == list(range(30, 37))
        expected = eager_pixels(builder, key, 32)
        decodes.clear()
        np.testing.assert_array_equal(source.images[some], expected[some])
        assert decodes
        decodes.clear()
        assert source.fingerprint() == load_tfds_images(cfg).fingerprint()
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset(cfg, input_size=24, seed=0)
    splits = split_indices(source, cfg, seed=0)
    for rows, positions in ((dataset.x_train, splits.train), (dataset.x_test, splits.test)):
        np.testing.assert_array_equal(rows.load(), to_uint8(resize(expected[positions], 24)))

# --- synthetic -----------------------------------------------------------------------------------

def test_synthetic_is_deterministic_lazy_and_balanced():
    cfg = data_config("synthetic", n_classes=12, images_per_class=20, image_size=16,
                          seed=5)
    source, again = load_synthetic_images(cfg), load_synthetic_images(cfg)
    assert len(source.images) == 240 and np.bincount(source.labels).tolist() == [20] * 12
    assert source.class_names[0] == "class00" and source.class_names[-1] == "class11"
    some = np.array([3, 100, 239])
    np.testing.assert_array_equal(source.images[some], again.images[some])
    np.testing.assert_array_equal(source.images[some][1], source.images[np.array([100])][0])
    assert source.fingerprint() == again.fingerprint()
    other = load_synthetic_images(data_config("synthetic", n_classes=12,
                                                  images_per_class=20, image_size=16, seed=6))
    assert other.fingerprint() != source.fingerprint()
    assert not np.array_equal(other.images[some], source.images[some])
    images = source.images[np.arange(240)]
    assert images.min() >= 0 and images.max() <= 255 and images.std() > 20


def test_synthetic_classes_are_learnable_by_a_linear_model():
    from sklearn.linear_model import LogisticRegression

    cfg = data_config("synthetic", n_classes=5, images_per_class=40, image_size=16)
    dataset = load_dataset(cfg, input_size=16, seed=0)
    x_train, x_test = dataset.x_train.load(), dataset.x_test.load()
    model = LogisticRegression(max_iter=300).fit(x_train.reshape(len(x_train), -1) / 255,
                                                 dataset.y_train)
    accuracy = model.score(x_test.reshape(len(x_test), -1) / 255, dataset.y_test)
    assert accuracy > 0.8


# --- npz -----------------------------------------------------------------------------------------

def test_npz_keeps_its_test_split_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 255, (30, 8, 8), np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 255, (9, 8, 8), np.uint8), y_test=np.arange(9) % 3,
             class_names=np.array(["a", "b", "c"]))
    cfg = data_config("npz", path=str(path), train_size="3")
    source = load_npz_images(cfg)
    assert source.class_names == ("a", "b", "c") and source.given_test.tolist() == \
        list(range(30, 39))
    dataset = load_dataset(cfg, input_size=32, seed=0)
    assert dataset.x_train.shape == (9, 32, 32, 3) and len(dataset.y_test) == 9


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("x_train", [
    np.random.default_rng(1).integers(0, 256, (50, 6, 7, 3), np.uint8),
    np.random.default_rng(2).uniform(0, 255, (50, 6, 7, 4)).astype(np.float32),
    np.random.default_rng(3).integers(0, 256, (50, 6, 7, 1), np.int64)])
def test_npz_images_are_read_from_the_file_as_needed(tmp_path, caplog, monkeypatch, save,
                                                     x_train):
    """Uncompressed arrays are read by position from the file, compressed ones from their
    extraction in the cache (none is loaded, so memory does not grow with them); either way the
    served pixels are the arrays' (grey repeated, alpha dropped, cast to uint8), and the values
    are checked a chunk at a time."""
    from tlbench.data import npz
    from tlbench.data.source import resize

    monkeypatch.setattr(npz, "CHECK_CHUNK", 7)
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "mine.npz"
    x_test = x_train[:9].copy()
    save(path, x_train=x_train, y_train=np.arange(50) % 2, x_test=x_test, y_test=np.arange(9) % 2)
    with caplog.at_level(logging.INFO, logger="tlbench"):
        source = load_npz_images(data_config("npz", path=str(path), input_size=6))
    files = [part.path for part in source.images.pixels.parts]
    assert files == [path] * 2 if save is np.savez else \
        all(file.is_relative_to(tmp_path / "cache" / "npz") for file in files)
    assert ("is stored compressed" in caplog.text) == (save is np.savez_compressed)
    served = np.concatenate([x_train, x_test])[..., :3].astype(np.uint8)
    served = np.repeat(served, 3, axis=-1) if served.shape[-1] == 1 else served
    some = np.array([58, 0, 49, 50, 3, 3])
    np.testing.assert_array_equal(source.images[some], resize(served[some].astype(np.float32), 6))
    x_train = x_train.astype(np.float32)
    x_train[23, 0, 0, 0] = np.nan
    save(path, x_train=x_train, y_train=np.arange(50) % 2)
    with pytest.raises(TlbenchError, match=r"NaN or inf pixels in 1 images \(the first is image "
                                           r"23\)"):
        load_npz_images(data_config("npz", path=str(path)))


def compressed_npz(path, grey=False, seed=0):
    """A np.savez_compressed .npz of 40 train and 11 test images, 16 px, smooth (so they
    compress): uint8 RGB, or float grey; returns the images, train then test."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (51, 4, 4) if grey else (51, 4, 4, 3), np.uint8)
    x = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)
    x = (x + rng.uniform(0, 0.9, x.shape)).astype(np.float32) if grey else x
    np.savez_compressed(path, x_train=x[:40], y_train=np.arange(40) % 4, x_test=x[40:],
                        y_test=np.arange(11) % 4)
    return x


def extraction_files(cache):
    """Each extracted member's rows.npy and done.npy, with their inode and mtime."""
    return {file: (file.stat().st_ino, file.stat().st_mtime_ns)
            for file in sorted((cache / "npz").glob("*/*.npy"))}


@pytest.mark.parametrize("grey", [False, True])
def test_npz_compressed_is_extracted_once_into_the_cache_and_read_from_there(
        tmp_path, caplog, monkeypatch, grey):
    """A compressed .npz's images are extracted, a chunk at a time, into $TLBENCH_CACHE/npz
    and served from there, equal to the arrays; a second load reads that extraction, writing
    nothing."""
    from tlbench.data import npz
    from tlbench.rowcache import RowFile

    monkeypatch.setattr(npz, "EXTRACT_BYTES", 1000)  # several chunks per member
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "mine.npz"
    x = compressed_npz(path, grey)
    with caplog.at_level(logging.INFO, logger="tlbench"):
        source = load_npz_images(data_config("npz", path=str(path)))
    parts = source.images.pixels.parts
    assert all(isinstance(part, RowFile) for part in parts)
    assert [part.path.parent.parent for part in parts] == [tmp_path / "cache" / "npz"] * 2
    assert caplog.text.count("is stored compressed; extracted its") == 2
    pixels = source.images.pixels
    np.testing.assert_array_equal(pixels[np.arange(51)], x.astype(np.uint8))
    extracted = extraction_files(tmp_path / "cache")
    assert len(extracted) == 4
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tlbench"):
        again = load_npz_images(data_config("npz", path=str(path)))
    assert "extracted" not in caplog.text and extraction_files(tmp_path / "cache") == extracted
    np.testing.assert_array_equal(again.images.pixels[np.arange(51)], pixels[np.arange(51)])


@pytest.mark.parametrize("interrupt", ["rows cut short", "done mask missing"])
def test_npz_interrupted_extraction_is_redone(tmp_path, caplog, monkeypatch, interrupt):
    """An extraction cut short (its rows truncated, or never marked done) is never served: the
    next load extracts the member again, and serves the arrays' pixels."""
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "mine.npz"
    x = compressed_npz(path)
    load_npz_images(data_config("npz", path=str(path)))
    rows = next((tmp_path / "cache" / "npz").glob("mine-x_train-*/rows.npy"))
    if interrupt == "rows cut short":
        os.truncate(rows, rows.stat().st_size // 2)
    else:
        (rows.parent / "done.npy").unlink()
    with caplog.at_level(logging.INFO, logger="tlbench"):
        source = load_npz_images(data_config("npz", path=str(path)))
    assert caplog.text.count("extracted its") == 1 and "x_train is stored compressed" in \
        caplog.text
    np.testing.assert_array_equal(source.images.pixels[np.arange(51)], x)


def test_npz_damaged_compressed_member_is_one_line(tmp_path, monkeypatch):
    """A compressed member whose bytes were damaged fails its CRC: one line naming it, and
    nothing of it is served by a later load."""
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(path, x_train=rng.integers(0, 256, (40, 16, 16, 3), np.uint8),
                        y_train=np.arange(40) % 4)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    for _ in range(2):
        with pytest.raises(TlbenchError, match=r"data.path=.*mine.npz: cannot read x_train "
                                               r"\(.*\): the file is damaged; save it again"):
            load_npz_images(data_config("npz", path=str(path)))
    assert not list((tmp_path / "cache" / "npz").glob("*/done.npy"))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_fortran_ordered_is_read_whole_and_said(tmp_path, caplog, save):
    """A Fortran-ordered member cannot be read a row at a time: it is read into memory, with a
    line giving its size and how to save it instead."""
    path = tmp_path / "mine.npz"
    x = np.asfortranarray(np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), np.uint8))
    save(path, x_train=x, y_train=np.arange(20) % 2)
    with caplog.at_level(logging.INFO, logger="tlbench"):
        source = load_npz_images(data_config("npz", path=str(path)))
    assert isinstance(source.images.pixels.parts[0], np.ndarray)
    assert "x_train is Fortran-ordered, so its 0 MiB are read into memory; save " \
        "np.ascontiguousarray(x_train)" in caplog.text
    np.testing.assert_array_equal(source.images.pixels[np.arange(20)], x)


def test_npz_parallel_loads_extract_once(tmp_path):
    """Two processes loading one compressed .npz at once: one extracts, the other waits for it
    (the entry's lock) and reads the same rows."""
    path = tmp_path / "mine.npz"
    x = compressed_npz(path)
    code = textwrap.dedent(f"""
        import logging, sys
        import numpy as np
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        from tlbench.config import group_config
        from tlbench.data.npz import NpzConfig, load_npz_images
        source = load_npz_images(group_config("data", "npz", NpzConfig, path={str(path)!r}))
        print("sum", int(source.images.pixels[np.arange(51)].sum(dtype=np.int64)))
    """)
    env = os.environ | {"TLBENCH_CACHE": str(tmp_path / "cache")}
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env=env) for _ in range(2)]
    outputs = [worker.communicate()[0] for worker in workers]
    assert all(f"sum {int(x.sum(dtype=np.int64))}" in out for out in outputs)
    assert sum(out.count("x_train is stored compressed; extracted") for out in outputs) == 1


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x_train": np.zeros((4, 8, 8)), "y_train": np.zeros(4, int), "x_test": np.zeros((2, 8, 8))},
     "missing arrays y_test .it has x_train, y_train, x_test.; it needs x_train, y_train and "
     r"optionally x_test, y_test \(both or neither\)"),
    ({"x_train": np.zeros((4, 8, 8)), "y_train": np.zeros(5, int), "x_test": np.zeros((2, 8, 8)),
      "y_test": np.zeros(2, int)}, "x_train has 4 images but y_train has 5 labels"),
    ({"x_train": np.zeros((4, 8, 8)), "y_train": np.zeros(4, int), "x_test": np.zeros((2, 9, 9)),
      "y_test": np.zeros(2, int)}, r"x_test images are \(9, 9\)"),
])
def test_npz_missing_keys_or_mismatched_lengths(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(TlbenchError, match=message):
        load_npz_images(data_config("npz", path=str(path)))


@pytest.mark.parametrize(("names", "expected"), [(None, ("cat", "dog", "owl")),
                                               (["owl", "dog", "cat"], ("owl", "dog", "cat"))])
def test_npz_string_labels_are_class_names(tmp_path, names, expected):
    """Labels stored as names (a traceback from NumPy before): ids in class_names' order, else
    in sorted order."""
    path = tmp_path / "named.npz"
    pets = np.array(["dog", "cat", "owl"])
    np.savez(path, x_train=np.zeros((6, 8, 8), np.uint8), y_train=np.tile(pets, 2),
             x_test=np.zeros((3, 8, 8), np.uint8), y_test=pets,
             **({} if names is None else {"class_names": np.array(names)}))
    source = load_npz_images(data_config("npz", path=str(path)))
    assert source.class_names == expected
    assert [source.class_names[i] for i in source.labels] == [*np.tile(pets, 2), *pets]


@pytest.mark.parametrize(("labels", "names", "message"), [
    (np.array(["dog", "cat"] * 3), ["dog"], "labels 'cat' are not in class_names"),
    (np.linspace(0, 1, 6), None, "must be integer class indices 0..k-1 or class names as "
                                 r"strings \(got float64\)"),
    (np.array([0, 1, -1, 0, 1, 0]), None, r"\(got int64, min -1\)"),
])
def test_npz_labels_that_are_not_classes(tmp_path, labels, names, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((6, 8, 8), np.uint8), y_train=labels,
             x_test=np.zeros((1, 8, 8), np.uint8), y_test=labels[:1],
             **({} if names is None else {"class_names": np.array(names)}))
    with pytest.raises(TlbenchError, match=message):
        load_npz_images(data_config("npz", path=str(path)))


def test_npz_that_is_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(TlbenchError, match="cannot read it as an .npz file"):
        load_npz_images(data_config("npz", path=str(tmp_path / "x.npz")))


# --- configs and unchanged sources ---------------------------------------------------------------

REQUIRED = {"folder": ["data.path=pets"], "npz": ["data.path=mine.npz"],
            "tfds": ["data.dataset=tf_flowers"]}
"""Values for the keys these sources require (refused while null); other sources compose as
packaged."""


@pytest.mark.parametrize("name", list(registry.SOURCES))
def test_every_data_config_composes_and_documents_its_keys(name):
    from tests.conftest import compose_config
    from tlbench.config import parse_config

    config = parse_config(compose_config([f"data={name}", *REQUIRED.get(name, [])]))
    assert isinstance(config.data, registry.SOURCES[name].Config)
    assert config.backbone.input_size == config.data.input_size
    if name in REQUIRED:
        with pytest.raises(TlbenchError, match="data.(path|dataset)=None is invalid"):
            parse_config(compose_config([f"data={name}"]))
    reference = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    documented = reference.read_text(encoding="utf-8")
    for field in dataclasses.fields(registry.SOURCES[name].Config):
        if field.name != "name":
            assert f"`data.{field.name}`" in documented or f"`.{field.name}`" in documented, \
                field.name


@pytest.mark.parametrize(("option", "kwargs", "key"), [
    ("folder", {}, "data.path"),
    ("folder", {"path": "x", "on_bad_file": "ignore"}, "data.on_bad_file"),
    ("folder", {"path": "x", "check": "full"}, "data.check"),
    ("keras", {"dataset": "imagenet"}, "data.dataset"),
    ("tfds", {}, "data.dataset"),
    ("synthetic", {"n_classes": 1}, "data.n_classes"),
    ("npz", {}, "data.path"),
])
def test_bad_source_configs_are_one_line(option, kwargs, key):
    with pytest.raises(TlbenchError, match=key):
        data_config(option, **kwargs)


def test_digits_and_shapes_fingerprints_and_splits_are_unchanged():
    """Pinned (feature cache format 2): the feature cache keys must not move by accident."""
    digits = load_digits_images(data_config("digits", classes=[5, 6, 7, 8, 9]))
    shapes = load_shapes_images(data_config("shapes", images_per_class=20))
    assert digits.fingerprint()[:16] == DIGITS59_FINGERPRINT
    assert shapes.fingerprint()[:16] == SHAPES_FINGERPRINT
    splits = split_indices(digits, data_config("digits", train_size="5"), 0)
    assert splits.test[:5].tolist() == [9, 11, 14, 18, 21]
    assert splits.train[:5].tolist() == [31, 46, 128, 173, 176]


DIGITS59_FINGERPRINT = "40ba03d37fdd0322"
SHAPES_FINGERPRINT = "748bb24a880b6554"


# --- loaded once per process ---------------------------------------------------------------------

def test_a_source_is_loaded_once_for_runs_that_differ_in_their_splits_only(caplog, monkeypatch):
    from collections import OrderedDict

    from tlbench import data
    from tlbench.data import load_source

    monkeypatch.setattr(data, "LOADED", OrderedDict())  # as in a fresh process
    with caplog.at_level(logging.INFO, logger="tlbench"):
        first = load_source(data_config("digits", input_size=32))
        lines = len(caplog.records)
        again = load_source(data_config("digits", input_size=32, train_size="10", split_seed=3))
    assert again is first and lines > 0  # "data digits: ... upscaled" for each run
    assert [r.getMessage() for r in caplog.records[lines:]] == \
        [r.getMessage() for r in caplog.records[:lines]]
    with pytest.raises(ValueError, match="read-only"):
        first.labels[0] = 1  # shared by later runs
    assert load_source(data_config("digits", input_size=32, classes=[5, 6])) is not first


def test_an_edited_folder_is_loaded_again(tmp_path):
    from tlbench.data import load_source

    image_folder(tmp_path, per_class=4)
    first = load_source(folder_cfg(tmp_path))
    assert load_source(folder_cfg(tmp_path)) is first
    write_image(tmp_path / "cat" / "new.png")
    assert len(load_source(folder_cfg(tmp_path)).labels) == len(first.labels) + 1
