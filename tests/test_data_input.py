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
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*PIXELS, f"data.path={path}", cwd=tmp_path, uri=uri)
    assert_one_line_error(result, *fragments)
    assert result.stderr.strip().splitlines()[-1].startswith(f"tlbench: error: data.path={path}")
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED" and fragments[0] in run.data.tags["error"]


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
