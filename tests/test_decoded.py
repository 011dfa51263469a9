"""The decoded-image cache: pixels equal to what keras.utils.image_dataset_from_directory gives
for every kind of file it reads, decoded once, filled in parallel with progress, refused when
the disk cannot hold it, and row files read back exactly."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tlbench import progress, rowcache
from tlbench.data import decoded_images
from tlbench.data.folder import load_folder_images, pillow_rgb, resized_like_tensorflow
from tlbench.errors import TlbenchError
from tlbench.rowcache import RowFile

from .conftest import data_config

SIZE = 24


def smooth(rng, height: int, width: int, channels: int, top: int = 255) -> np.ndarray:
    """A smooth random image (JPEG-friendly), as (H, W, C) integers in [0, top]."""
    small = rng.random((5, 5, channels)) * top
    rows = np.linspace(0, 4, height)[:, None]
    cols = np.linspace(0, 4, width)[None, :]
    image = small[np.rint(rows).astype(int), np.rint(cols).astype(int)]
    noise = rng.normal(0, top / 40, (height, width, channels))
    return np.clip(image + noise, 0, top)


def png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def every_kind_of_file(root: Path) -> list[str]:
    """A folder of two classes holding each colour mode, bit depth and format a user brings,
    larger and smaller than SIZE, with and without alpha; their names."""
    rng = np.random.default_rng(0)

    def image(height, width, channels, top=255, dtype=np.uint8):
        pixels = smooth(rng, height, width, channels, top).astype(dtype)
        return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)

    files = {
        "a/rgb.jpg": (image(60, 40, 3), {"quality": 85}),
        "a/grey.jpg": (image(30, 50, 1), {"quality": 85}),
        "a/cmyk.jpg": (image(40, 40, 3).convert("CMYK"), {"quality": 85}),
        "a/rgb.png": (image(17, 29, 3), {}),
        "a/rgba.png": (image(40, 40, 4), {}),
        "a/grey.png": (image(20, 20, 1), {}),
        "b/grey_alpha.png": (image(20, 20, 1).convert("LA"), {}),
        "b/palette.png": (image(33, 33, 3).convert("P"), {}),
        "b/grey16.png": (image(25, 25, 1, top=65535, dtype=np.uint16), {}),
        "b/rgb.bmp": (image(13, 45, 3), {}),
        "b/still.gif": (image(48, 48, 3).convert("P"), {}),
        "b/tall.png": (image(300, 8, 3), {}),
    }
    for name, (picture, options) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        picture.save(root / name, **options)
    png16(root / "b" / "rgb16.png", smooth(rng, 30, 20, 3, 65535).astype(np.uint16))
    return [*files, "b/rgb16.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Every kind of file, loaded as a folder source, decoded into a fresh cache."""
    root = tmp_path_factory.mktemp("kinds")
    names = every_kind_of_file(root)
    source = load_folder_images(data_config("folder", path=str(root), input_size=SIZE))
    positions = np.arange(len(source.labels))
    rows = decoded_images(source, "kinds", SIZE, positions, root.parent / "cache", 0)
    return root, names, source, rows.read(positions)


def test_cached_pixels_are_image_dataset_from_directory_s_rounded(folder):
    """For every file image_dataset_from_directory reads, the cached uint8 pixels are its float32
    pixels rounded to the nearest level: they differ by at most 0.5, and by exactly the
    rounding."""
    root, names, source, cached = folder
    reference = keras.utils.image_dataset_from_directory(
        root, image_size=(SIZE, SIZE), batch_size=64, shuffle=False, verbose=False)
    pixels = np.concatenate([x.numpy() for x, _ in reference])
    index = {str(path): i for i, path in enumerate(source.images.files)}
    assert sorted(Path(p).relative_to(root).as_posix() for p in reference.file_paths) == \
        sorted(names)
    for path, expected in zip(reference.file_paths, pixels, strict=True):
        got = cached[index[path]]
        assert np.abs(got - expected).max() <= 0.5, path
        np.testing.assert_array_equal(got, np.clip(np.rint(expected), 0, 255), err_msg=path)


def test_pillow_decodes_as_tensorflow_does_except_jpeg_rounding(folder):
    """On JAX and PyTorch files are decoded by Pillow (TensorFlow is not imported there): the
    same pixels for every format, except JPEGs, where Pillow's accurate integer DCT differs from
    TensorFlow's fast one (measured here: about 1 level on average, at most 5; on scikit-learn's
    two sample photos at full size, 1.0 and 0.9 on average, at most 6)."""
    root, names, source, cached = folder
    positions = np.arange(len(source.labels))
    by_pillow = np.concatenate([images for _, images in
                                source.images._pillow_decoded(positions, SIZE)])
    for position, path in enumerate(source.images.files):
        difference = np.abs(by_pillow[position].astype(int) - cached[position])
        if path.suffix == ".jpg":
            assert difference.max() <= 8 and difference.mean() < 2, path
        else:
            assert difference.max() == 0, path


def test_the_resize_is_tensorflow_s_to_the_bit():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    for height, width, size in [(50, 30, 24), (7, 9, 24), (224, 224, 224), (401, 13, 32)]:
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        expected = tf.image.resize(image, (size, size), method="bilinear").numpy()
        np.testing.assert_array_equal(resized_like_tensorflow(image, size), expected)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    """Pillow's convert('RGB') turns 16-bit grey white; tlbench keeps TensorFlow's high byte."""
    values = np.array([[0, 256, 30000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    assert pillow_rgb(tmp_path / "g.png")[0, :, 0].tolist() == [0, 1, 117, 255]


def test_a_sweep_decodes_each_image_once(tmp_path, caplog):
    """The first run decodes the whole (small) source; later runs, other splits or another
    process's worker, decode nothing; another size is another entry."""
    root = tmp_path / "data"
    every_kind_of_file(root)
    source = load_folder_images(data_config("folder", path=str(root), input_size=SIZE))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="tlbench"):
        decoded_images(source, "kinds", SIZE, np.array([0, 3]), cache, fill_limit=100)
        decoded_images(source, "kinds", SIZE, np.arange(len(source.labels)), cache, 100)
        decoded_images(source, "kinds", 16, np.array([1]), cache, fill_limit=0)
    decoded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoded")]
    assert len(decoded) == 2 and decoded[0].startswith(f"decoded {len(source.labels)} kinds")
    assert decoded[1].startswith("decoded 1 kinds images at 16x16")


def test_a_long_fill_says_how_far_it_is(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)
    root = tmp_path / "data"
    every_kind_of_file(root)
    source = load_folder_images(data_config("folder", path=str(root), input_size=SIZE))
    monkeypatch.setattr("tlbench.data.folder.DECODE_BATCH", 4)
    with caplog.at_level(logging.INFO, logger="tlbench"):
        decoded_images(source, "kinds", SIZE, np.arange(13), tmp_path / "cache", 0)
    lines = [r.getMessage() for r in caplog.records if ": 4/13 images" in r.getMessage()]
    assert lines and "/s, " in lines[0] and lines[0].endswith("left)")


def test_a_fill_the_disk_cannot_hold_is_refused_with_both_numbers(tmp_path, monkeypatch):
    root = tmp_path / "data"
    every_kind_of_file(root)
    source = load_folder_images(data_config("folder", path=str(root), input_size=SIZE))
    free = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(rowcache.shutil, "disk_usage", lambda folder: free)
    with pytest.raises(TlbenchError, match=r"needs 0\.00 GiB but the disk has 0\.00 GiB free"):
        decoded_images(source, "kinds", SIZE, np.arange(13), tmp_path / "cache", 0)
    monkeypatch.undo()
    rows = decoded_images(source, "kinds", SIZE, np.arange(13), tmp_path / "cache", 0)
    assert rows.read([0]).any()  # the refused fill left an entry that fills now


def test_a_file_no_decoder_reads_is_named(tmp_path):
    every_kind_of_file(tmp_path / "data")
    broken = tmp_path / "data" / "a" / "rgb.jpg"
    broken.write_bytes(broken.read_bytes()[:200] + b"\x00" * 50 + b"\xff\xd9")
    source = load_folder_images(data_config("folder", path=str(tmp_path / "data"),
                                            input_size=SIZE))
    with pytest.raises(TlbenchError, match=r"cannot decode .*rgb\.jpg"):
        decoded_images(source, "kinds", SIZE, np.arange(13), tmp_path / "cache", 0)


def test_row_files_read_and_write_runs_and_single_rows(tmp_path):
    rows = RowFile.create(tmp_path / "rows.npy", 10, (2, 3), np.float16)
    values = np.arange(60, dtype=np.float16).reshape(10, 2, 3)
    rows.write(np.array([0, 1, 2, 7]), values[[0, 1, 2, 7]])
    rows.write(np.array([9, 3, 4]), values[[9, 3, 4]])
    np.testing.assert_array_equal(rows.read([9, 0, 1, 2, 3, 4, 7]), values[[9, 0, 1, 2, 3, 4, 7]])
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy", mmap_mode="r")[[3, 4]],
                                  values[[3, 4]])
    assert RowFile.open(tmp_path / "rows.npy", 10).row_shape == (2, 3)
    assert RowFile.open(tmp_path / "rows.npy", 11) is None  # another length
    with open(tmp_path / "rows.npy", "r+b") as handle:
        handle.truncate(100)  # an interrupted copy
    assert RowFile.open(tmp_path / "rows.npy", 10) is None
