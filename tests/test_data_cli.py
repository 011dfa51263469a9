"""Data through the real CLI: an image folder trains end to end, a bad one fails the run."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.test_cli import assert_one_line_error, runs_of, tlbench

TINY = ["data=folder", "data.input_size=32", "data.train_size=3", "trainer.epochs=1",
        "trainer.patience=null", "backbone.weights=null"]


def folder(root, classes, per_class=10):
    """root/<class>/<i>.png: 12 px images, one colour per class, a third of them grey."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((12, 12, 3), 40, np.uint8)
            pixels[..., c % 3] = 220
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 3 == 0 else image).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_image_folder_trains_and_names_its_classes(tmp_path):
    data = folder(tmp_path / "pets", ["chat", "chien", "lapin"])
    (data / "chat" / "broken.jpg").write_text("not a jpeg")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*TINY, f"data.path={data}", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 1 unreadable or non-image files" in result.stderr + result.stdout
    assert "images are smaller than 32x32 (smallest 12x12); they are upscaled" in \
        result.stderr + result.stdout
    (run,) = runs_of(uri)
    assert run.info.status == "FINISHED" and run.data.metrics["n_classes"] == 3
    assert run.data.metrics["n_train"] == 9 and run.data.params["data.path"] == str(data)
    assert run.data.tags["class_names"] == "chat, chien, lapin"  # shown in the report's header
    path = MlflowClient(uri).download_artifacts(run.info.run_id, "confusion_matrix.csv", tmp_path)
    with open(path, encoding="utf-8") as csv:
        assert csv.readline().strip() == "true\\predicted,chat,chien,lapin"


def test_bad_folder_leaves_a_failed_run_and_one_line(tmp_path):
    data = folder(tmp_path / "pets", ["chat"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*TINY, f"data.path={data}", cwd=tmp_path, uri=uri)
    assert_one_line_error(result, "only one class folder (chat)")
    assert result.stderr.strip().splitlines()[-1].startswith("tlbench: error: data.path: only one")
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED" and "only one class folder" in run.data.tags["error"]


@pytest.mark.slow
def test_a_sweep_decodes_a_folder_once_and_streams_every_route(tmp_path):
    """A sweep over strategies, sizes and seeds on an image folder decodes its files in its first
    job only; every job (on features, cut activations or images) then reads the caches."""
    data = folder(tmp_path / "pets", ["chat", "chien", "lapin"], per_class=12)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", *TINY, f"data.path={data}", "backbone=mobilenetv2",
                     "strategy=feature_extraction,partial_finetune,full_retrain",
                     "data.train_size=3,all", "seed=0,1", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stderr + result.stdout
    assert output.count("decoded 36 folder images at 32x32") == 1, output[-3000:]
    runs = runs_of(uri)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["inputs"] for r in runs} == {"features", "cut", "images"}
