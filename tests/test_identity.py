"""Run identity is the content that decides a result: changed files are rerun, settings that take
no effect neither split a cell nor duplicate it."""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from tlbench.tracking.identity import config_hash, identity

from .test_cli import TINY, tlbench


def write_npz(path, seed: int) -> None:
    """Three classes of random 32 px images, a train and a test split."""
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
             y_train=np.repeat(np.arange(3), 10),
             x_test=rng.integers(0, 256, (15, 32, 32, 3), dtype=np.uint8),
             y_test=np.repeat(np.arange(3), 5))


def test_ineffective_keys_leave_the_hash_and_the_params_alone(tiny_config):
    base = tiny_config("strategy=scratch", "backbone.weights=null")
    assert config_hash(base) == config_hash(tiny_config("strategy=scratch",
                                                        "backbone.weights=source:digits04"))
    assert config_hash(base) == config_hash(tiny_config("strategy=scratch", "pretrain.epochs=3",
                                                        "backbone.weights=null"))
    assert config_hash(base) == config_hash(tiny_config("strategy=scratch", "trainer.verbose=2",
                                                        "backbone.weights=null"))
    assert identity(tiny_config("strategy=scratch", "backbone.weights=source:digits04"))[
        "backbone"]["weights"] is None  # logged as what it ran with
    transfer = tiny_config("backbone.weights=source:digits04")
    assert config_hash(transfer) != config_hash(tiny_config("backbone.weights=source:digits04",
                                                            "pretrain.epochs=3"))


def test_a_weights_file_is_identified_by_its_content(tiny_config, tmp_path):
    path = tmp_path / "base.weights.h5"
    path.write_bytes(b"one")
    config = tiny_config(f"backbone.weights={path}")
    before = config_hash(config)
    path.write_bytes(b"two")
    assert config_hash(config) != before


def test_scratch_under_two_weights_trains_once_and_a_changed_npz_is_rerun(tmp_path):
    data = tmp_path / "data.npz"
    write_npz(data, seed=0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = ["-m", "backbone=vgg16", "strategy=scratch", "backbone.weights=source:digits04,null",
               "data=npz", f"data.path={data}", "data.input_size=32", *TINY]

    def finished() -> list:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tlbench")
        return client.search_runs([experiment.experiment_id],
                                  "attributes.status = 'FINISHED' and tags.config_hash != ''")

    first = tlbench(*command, cwd=tmp_path, uri=uri)
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = finished()  # the second job is the same cell: skipped, not a replicate
    assert run.data.params["backbone.weights"] == "null"
    assert "already FINISHED" in first.stdout + first.stderr
    write_npz(data, seed=1)  # the same path, other images
    assert tlbench(*command, cwd=tmp_path, uri=uri).returncode == 0
    assert len(finished()) == 2
    assert tlbench(*command, cwd=tmp_path, uri=uri).returncode == 0
    assert len(finished()) == 2
