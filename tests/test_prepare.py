"""The prepare stage refuses a run whose val or test images trained its source checkpoint."""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from tlbench.data import load_source, split_indices

from .conftest import data_config
from .test_cli import TINY, assert_one_line_error, tlbench


def pixels_of(option: str, positions=None, **overrides) -> set[bytes]:
    """Raw pixel bytes of a data source's images, independently of tlbench's digests."""
    cfg = data_config(option, **overrides)
    source = load_source(cfg)
    positions = np.arange(len(source.labels)) if positions is None else positions(source, cfg)
    return {image.astype(np.uint8).tobytes() for image in source.images.pixels[positions]}


def test_digits_sharing_images_with_digits04_are_refused_before_pretraining(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("data=digits", "data.split_seed=1", "backbone.weights=source:digits04",
                     *TINY[:-1], cwd=tmp_path, uri=uri)
    source_train = pixels_of("digits", lambda s, c: split_indices(s, c, 0).train,
                             classes=[0, 1, 2, 3, 4])

    target = load_source(data_config("digits", split_seed=1))
    splits = split_indices(target, data_config("digits", split_seed=1), 0)
    images = target.images.pixels[np.concatenate([splits.val, splits.test])].astype(np.uint8)
    expected = sum(image.tobytes() in source_train for image in images)
    assert expected > 100  # half the target's classes are the source's
    assert_one_line_error(result, f"{expected} of the {len(images)} val/test images of "
                                  "data=digits are training images of that source checkpoint")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics["source_overlap"] == expected
    assert "pretrain_seconds" not in run.data.metrics  # refused before any pretraining
    assert "pretraining" not in result.stdout + result.stderr
    assert "source val accuracy" not in result.stdout + result.stderr
