"""Data input that used to end in a traceback or a misleading log line: a .npy where an .npz is
expected, object arrays in an .npz, and the sizes a run's images are decoded at and seen at."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from tests.conftest import build_run
from tests.test_cli import assert_one_line_error, runs_of, tlbench

PIXELS = ["backbone=pixels", "backbone.weights=null", "trainer.epochs=1", "trainer.patience=null",
          "data=npz", "data.input_size=32"]


def ragged_npz(path):
    """An .npz whose x_train holds images of two sizes: numpy stores it as an object array."""
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)]
    np.savez(path, x_train=ragged, y_train=np.array([0, 1]), x_test=np.zeros((2, 8, 8)),
             y_test=np.array([0, 1]))


def assert_refused_with_a_failed_run(tmp_path, path, fragments) -> None:
    """A run on the npz at `path` ends in one line naming data.path (with `fragments`), a
    non-zero exit and a FAILED run whose error tag says the first fragment."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*PIXELS, f"data.path={path}", cwd=tmp_path, uri=uri)
    assert_one_line_error(result, *fragments)
    assert result.stderr.strip().splitlines()[-1].startswith(f"tlbench: error: data.path={path}")
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED" and fragments[0] in run.data.tags["error"]


@pytest.mark.parametrize(("write", "fragments"), [
    (lambda path: np.save(path, np.zeros((4, 8, 8), np.uint8)),
     ["a single .npy array, not an .npz archive", "np.savez(path, x_train="]),
    (ragged_npz, ["cannot read x_train (Object arrays cannot be loaded when allow_pickle=False)",
                  "np.stack(images).astype('uint8')"]),
], ids=["npy", "object-arrays"])
def test_wrong_array_files_are_one_line_and_a_failed_run(tmp_path, write, fragments):
    path = tmp_path / "data.npy"
    write(path)
    path = path if path.exists() else tmp_path / "data.npy.npz"  # np.savez appends .npz
    assert_refused_with_a_failed_run(tmp_path, path, fragments)


def test_log_lines_name_the_decode_size_and_the_size_the_backbone_sees(tmp_path, tiny_config,
                                                                         caplog):
    for name, colour in (("red", 0), ("green", 1)):
        (tmp_path / name).mkdir()
        for i in range(8):
            pixels = np.full((12, 12, 3), 30 * i, np.uint8)
            pixels[..., colour] = 220
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    config = tiny_config("backbone=pixels", "data=folder", f"data.path={tmp_path}",
                         "data.input_size=64", "backbone.input_size=32", "data.train_size=3")
    with caplog.at_level(logging.INFO, logger="tlbench"):
        dataset, _ = build_run(config)
    assert dataset.x_train.shape[1:3] == (32, 32)
    text = caplog.text
    assert "16 of 16 images are smaller than 64x64 (smallest 12x12); they are upscaled to 64x64 " \
           "when decoded (data.input_size)" in text
    assert "images decoded at 64x64, resized to 32x32 for the backbone" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tlbench"):
        build_run(tiny_config("backbone=pixels", "data=folder", f"data.path={tmp_path}",
                              "data.input_size=32", "data.train_size=3"))
    assert "images 32x32, as the backbone sees them" in caplog.text


def two_class_arrays(rng, n: int = 40):
    """n 12x12 grey images of two classes (dark, bright) as floats in [0, 255], labels 0/1."""
    labels = np.arange(n) % 2
    pixels = rng.uniform(0, 100, (n, 12, 12)) + 120 * labels[:, None, None]
    return pixels, labels


def with_nan(x):
    x = x.copy()
    x[3, 0, 0] = np.nan
    return x


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda x, y: (with_nan(x), y),
     ["x_train has NaN or inf pixels in 1 images (the first is image 3)",
      "tlbench expects pixels in 0..255 (uint8 range)"]),
    (lambda x, y: (x - 128, y),
     ["x_train pixels range from -1", "tlbench expects pixels in 0..255 (uint8 range)",
      "undo mean subtraction"]),
    (lambda x, y: (x / 255, y),
     ["scaled to [0, 1]", "tlbench expects pixels in 0..255 (uint8 range)",
      "(x * 255).round().astype('uint8')"]),
    (lambda x, y: (x, y + 1),
     ["integer labels run from 1 to 2, so class 0 has no image", "save y - 1"]),
    (lambda x, y: (x, np.eye(3)[y] * 0.5),
     ["y_train has shape (40, 3) but is not one-hot"]),
], ids=["nan", "mean-subtracted", "unit-range", "labels-1-to-k", "soft-labels"])
def test_npz_values_that_would_train_at_chance_are_one_line_and_a_failed_run(tmp_path, change,
                                                                              fragments):
    rng = np.random.default_rng(0)
    x_train, y_train = change(*two_class_arrays(rng))
    x_test, y_test = change(*two_class_arrays(rng, 10))
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert_refused_with_a_failed_run(tmp_path, path, fragments)


def test_npz_with_one_hot_labels_and_no_test_arrays_runs_on_a_carved_test_split(tmp_path):
    """One-hot labels are read as their argmax, and said; without x_test/y_test a stratified
    test split is carved from train as for a folder without test/ (data.test_fraction)."""
    pixels, labels = two_class_arrays(np.random.default_rng(0), 100)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=pixels.astype(np.uint8), y_train=np.eye(2, dtype=np.uint8)[labels])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*PIXELS, f"data.path={path}", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert "y_train is one-hot (100, 2); read as class indices 0..1 (argmax)" in log
    assert "no x_test/y_test; a stratified test split (data.test_fraction=0.2) is carved " \
           "from x_train" in log
    (run,) = runs_of(uri)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert metrics["n_test"] == 20 and metrics["n_val"] == 10 and metrics["n_classes"] == 2
    assert metrics["n_train"] == 70 and metrics["test_accuracy"] > 0.9
