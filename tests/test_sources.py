"""Sources a user picks that other tests do not train from, through the real CLI:
`backbone.weights=source:shapes` (pretrained, cached, loaded) and `data=keras` read from a
dataset file in Keras' cache (no download)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from .test_cli import runs_of, tlbench

QUICK = ["data.train_size=10", "data.classes=[5,6]", "trainer.epochs=1", "trainer.patience=null"]


def test_a_shapes_source_checkpoint_is_pretrained_then_loaded(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(
        "backbone=mobilenetv3small",
        "backbone.weights=source:shapes",
        "pretrain.epochs=1",
        "pretrain.min_val_accuracy=0",
        *QUICK,
        cwd=tmp_path,
        uri=uri,
        TLBENCH_CACHE=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = runs_of(uri)
    assert run.info.status == "FINISHED" and run.data.tags["weights.kind"] == "source"
    assert run.data.params["backbone.weights"] == "source:shapes"
    manifest_file = MlflowClient(uri).download_artifacts(
        run.info.run_id, "source_manifest.json", str(tmp_path)
    )
    manifest = json.loads(Path(manifest_file).read_text())
    assert manifest["source"] == "shapes" and manifest["epochs"] == 1
    assert run.data.metrics["source_val_accuracy"] == manifest["source_val_accuracy"]
    assert len(list((tmp_path / "cache").rglob("base.weights.h5"))) == 1  # pretrained, cached


def write_idx(path, array: np.ndarray) -> None:
    """An array as an MNIST-style idx file, gzipped (the header is skipped when read)."""
    header = b"\0" * (8 if array.ndim == 1 else 16)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fashion_mnist_files(datasets, per_class: int) -> None:
    """A tiny Fashion-MNIST in Keras' cache: class k is a bright band at rows 3k to 3k+2."""
    folder = datasets / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("t10k", per_class // 2)):
        labels = np.repeat(np.arange(10), count)
        images = rng.integers(0, 60, (len(labels), 28, 28))
        for label in range(10):
            images[labels == label, 3 * label : 3 * label + 3] += 180
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)


def test_keras_dataset_trains_from_the_keras_cache(tmp_path):
    fashion_mnist_files(tmp_path / "keras" / "datasets", per_class=30)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(
        "data=keras",
        "data.dataset=fashion_mnist",
        "backbone=pixels",
        "backbone.weights=null",
        "data.train_size=10",
        "trainer.epochs=10",
        "trainer.patience=null",
        cwd=tmp_path,
        uri=uri,
        KERAS_HOME=str(tmp_path / "keras"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = runs_of(uri)
    metrics = run.data.metrics
    assert (metrics["n_train"], metrics["n_test"], metrics["n_classes"]) == (100, 150, 10)
    assert metrics["test_accuracy"] > 0.6  # bands this bright are easy; chance is 0.1
    assert run.data.tags["class_names"].startswith("T-shirt/top, Trouser, Pullover")
