"""VTAB-1k: the derived labels on hand-made examples, a tiny CLEVR-like TFDS dataset built and
prepared offline and read through data=tfds with VTAB's splits, every vtab1k task composed by
Hydra, and the real CLI on a missing dataset and on the tiny one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose_config, data_config
from tlbench.config import parse_config
from tlbench.data.split import split_indices
from tlbench.data.tfds import load_tfds_images
from tlbench.data.vtab import DERIVED_LABELS

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "conf" / "suite" / "vtab1k.yaml"
TASKS = sorted(path.stem for path in (REPO / "conf" / "data" / "vtab1k").glob("*.yaml"))
GROUPS = {"natural": 7, "specialized": 4, "structured": 8}


def label(name: str, example: dict) -> int:
    return DERIVED_LABELS[name].compute(example)


def test_clevr_labels_count_objects_and_bin_the_nearest_depth() -> None:
    objects = {
        "size": np.zeros(5),
        "pixel_coords": np.array([[0, 0, 9.2], [0, 0, 8.7]] * 2 + [[0, 0, 12.0]]),
    }
    assert label("clevr_count", {"objects": objects}) == 2  # 5 objects, minus 3
    assert label("clevr_closest_distance", {"objects": objects}) == 2  # 8.7 in (8.5, 9]
    assert len(DERIVED_LABELS["clevr_count"].classes) == 8
    assert len(DERIVED_LABELS["clevr_closest_distance"].classes) == 6


def test_kitti_closest_vehicle_ignores_pedestrians_and_has_a_no_vehicle_class() -> None:
    def example(types, depths):
        location = np.zeros((len(depths), 3))
        location[:, 2] = depths
        return {"objects": {"type": np.array(types), "location": location}}

    assert label("kitti_closest_vehicle_distance", example([0, 3], [30.0, 2.0])) == 2
    assert label("kitti_closest_vehicle_distance", example([1, 2], [12.0, 7.0])) == 0
    assert label("kitti_closest_vehicle_distance", example([4], [5.0])) == 3
    assert label("kitti_closest_vehicle_distance", example([], [])) == 3


def test_dsprites_bins_positions_and_orientations_into_16_classes() -> None:
    assert [label("dsprites_x_position", {"label_x_position": x}) for x in (0, 1, 2, 31)] == [
        0,
        0,
        1,
        15,
    ]
    assert [label("dsprites_orientation", {"label_orientation": o}) for o in (0, 2, 3, 39)] == [
        0,
        0,
        1,
        15,
    ]


@pytest.fixture(scope="module")
def tiny_clevr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLEVR-like TFDS dataset (image + objects with size and pixel_coords) prepared offline:
    train 24 examples with 3 to 5 objects in turn, validation 9."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class TlbenchTinyClevr(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("3.1.0")

        def _info(self):
            objects = tfds.features.Sequence(
                {
                    "size": tfds.features.ClassLabel(names=["small", "large"]),
                    "pixel_coords": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                }
            )
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(None, None, 3)), "objects": objects}
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(24, 0),
                "validation": self._generate_examples(9, 1),
            }

        def _generate_examples(self, n, offset):
            for i in range(n):
                count = 3 + i % 3
                yield (
                    f"{offset}-{i}",
                    {
                        "image": np.full((12, 16, 3), 60 * (i % 3), np.uint8),
                        "objects": {
                            "size": [0] * count,
                            "pixel_coords": [[1.0, 2.0, 9.0 + 0.1 * i]] * count,
                        },
                    },
                )

    folder = tmp_path_factory.mktemp("tfds")
    TlbenchTinyClevr(data_dir=str(folder)).download_and_prepare()
    return folder


def tiny_clevr_config(folder: Path, **overrides):
    """The vtab1k clevr_count task's settings, on the tiny dataset at 32 px."""
    settings = parse_config(compose_config(["data=vtab1k/clevr_count"])).data
    return data_config(
        "tfds",
        **{
            "task": settings.task,
            "group": settings.group,
            "derived_label": settings.derived_label,
            "dataset": "tlbench_tiny_clevr:3.*.*",
            "data_dir": str(folder),
            "train_split": "train[:12]",
            "val_split": "train[18:24]",
            "test_split": settings.test_split,
            "input_size": 32,
        }
        | overrides,
    )


def test_tfds_source_reads_vtab_splits_and_derived_labels(tiny_clevr: Path) -> None:
    source = load_tfds_images(tiny_clevr_config(tiny_clevr))
    assert source.class_names == DERIVED_LABELS["clevr_count"].classes
    assert len(source.labels) == 12 + 6 + 9
    assert source.given_val.tolist() == list(range(12, 18))
    assert source.given_test.tolist() == list(range(18, 27))
    # TFDS shuffles on preparing: the test split (validation) still holds 3, 4, 5 objects thrice
    assert np.bincount(source.labels[source.given_test]).tolist() == [3, 3, 3]


def test_final_protocol_trains_on_train_and_val(tiny_clevr: Path) -> None:
    tune = tiny_clevr_config(tiny_clevr)
    final = tiny_clevr_config(tiny_clevr, protocol="final")
    source = load_tfds_images(tune)
    tuned, last = split_indices(source, tune, seed=0), split_indices(source, final, seed=0)
    assert tuned.train.tolist() == list(range(12))
    assert last.train.tolist() == list(range(18))  # train800 + val200, in VTAB's terms
    assert tuned.val.tolist() == last.val.tolist() == list(range(12, 18))
    assert tuned.test.tolist() == last.test.tolist() == list(range(18, 27))


def test_every_vtab1k_task_composes_with_the_protocols_settings() -> None:
    assert len(TASKS) == 19
    groups: dict[str, int] = {}
    for task in TASKS:
        data = parse_config(compose_config([f"data=vtab1k/{task}"])).data
        assert (data.name, data.task, data.input_size, data.download) == ("tfds", task, 224, False)
        assert data.train_split == "train[:800]" and data.val_split and data.test_split
        assert ":" in data.dataset  # a pinned TFDS version
        groups[data.group] = groups.get(data.group, 0) + 1
    assert groups == GROUPS
    assert all(f"vtab1k/{task}" in SUITE.read_text() for task in TASKS)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m tlbench ARGS` in a subprocess, as a user runs it."""
    environment = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tlbench", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_missing_dataset_is_one_line_saying_how_to_prepare_it(tmp_path: Path) -> None:
    done = cli(
        "data=vtab1k/dtd",
        f"data.data_dir={tmp_path}",
        "backbone=pixels",
        "data.input_size=32",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert (
        "data.dataset=dtd:3.*.*: split train[:800]+validation[:200]+test is not prepared" in message
    )
    assert "tfds build dtd:3.*.* --data_dir DIR" in message and "data.download=true" in message
    assert "Traceback" not in done.stderr


def test_the_cli_runs_a_vtab_task_on_the_tiny_dataset(tiny_clevr: Path, tmp_path: Path) -> None:
    done = cli(
        "data=vtab1k/clevr_count",
        "data.dataset='tlbench_tiny_clevr:3.*.*'",
        f"data.data_dir={tiny_clevr}",
        "data.train_split='train[:12]'",
        "data.val_split='train[18:24]'",
        "data.input_size=32",
        "data.protocol=final",
        "backbone=pixels",
        "head=logreg",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])[0]
    assert run.info.run_name.startswith("clevr_count-pixels-feature_extraction")
    assert run.data.params["data.task"] == "clevr_count"
    assert run.data.params["data.protocol"] == "final"
    assert run.data.metrics["n_train"] == 18
