"""Source checkpoints: trained once (even by concurrent workers), cached, checked, and loadable."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tlbench.backbone import BACKBONES, build_base, sha256_of
from tlbench.config import BackboneConfig, PretrainConfig, TrainerConfig, group_config, parse_config
from tlbench.errors import TlbenchError
from tlbench.pretrain import (
    HEAD_FILE,
    checkpoint_dir,
    ensure_checkpoint,
    source_checkpoint,
    source_data,
    source_head,
)

from .conftest import compose_config
from .test_cli import tlbench

BACKBONE = group_config("backbone", "mobilenetv2", BackboneConfig, weights="source:digits04",
                        input_size=32)
TRAINER = group_config("trainer", "default", TrainerConfig)


def tiny(cache_dir, **changes) -> PretrainConfig:
    """One epoch, no accuracy floor: fast checkpoints for mechanics tests."""
    return group_config("pretrain", "default", PretrainConfig, **{
        "epochs": 1, "min_val_accuracy": 0.0, "cache_dir": str(cache_dir)} | changes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch digits 0-4 checkpoint, trained once for the module."""
    cfg = tiny(tmp_path_factory.mktemp("cache"))
    return cfg, ensure_checkpoint(BACKBONE, "digits04", cfg, TRAINER)


def test_checkpoint_has_weights_and_a_complete_manifest(trained):
    _, checkpoint = trained
    assert not checkpoint.cache_hit and checkpoint.pretrain_seconds > 0
    manifest = checkpoint.manifest
    assert manifest["weights_sha256"] == sha256_of(checkpoint.weights_path)
    assert manifest["classes"] == ["0", "1", "2", "3", "4"]
    assert manifest["source_data"]["classes"] == [0, 1, 2, 3, 4]
    assert (manifest["input_size"], manifest["epochs"], manifest["seed"]) == (32, 1, 0)
    assert 0 <= manifest["source_val_accuracy"] <= 1 and manifest["n_val"] == 90
    assert {"tlbench_version", "keras_version", "bn_momentum", "pretrain_seconds"} <= set(manifest)
    on_disk = json.loads((checkpoint.weights_path.parent / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["head_sha256"] == sha256_of(checkpoint.weights_path.parent / HEAD_FILE)
    assert sorted(p.name for p in checkpoint.weights_path.parent.iterdir()) == [
        "base.weights.h5", "head.weights.h5", "manifest.json"]  # no temporary files left behind


def test_second_request_is_a_cache_hit(trained):
    cfg, first = trained
    again = ensure_checkpoint(BACKBONE, "digits04", cfg, TRAINER)
    assert again.cache_hit and again.pretrain_seconds == 0.0
    assert again.manifest == first.manifest


def test_checkpoint_loads_into_the_headless_backbone(trained):
    _, checkpoint = trained
    base = build_base(BACKBONES["mobilenetv2"], 32, str(checkpoint.weights_path), 0.9)
    assert len(base.get_weights()) > 0
    assert not np.allclose(base.get_weights()[0],
                           build_base(BACKBONES["mobilenetv2"], 32, None, 0.9).get_weights()[0])


def test_saved_head_is_the_source_classifier(trained):
    """Base + head reproduce the source model: its val accuracy is the manifest's."""
    from tlbench.data import load_dataset
    from tlbench.frozen.cache import extractor

    _, checkpoint = trained
    spec = BACKBONES["mobilenetv2"]
    base = build_base(spec, 32, str(checkpoint.weights_path), 0.9)
    source = load_dataset(dataclasses.replace(source_data("digits04"), train_size="all"), 32, 0)
    pooled = extractor(base, spec, "pooled").predict(source.x_val.load(), verbose=0)
    head = source_head(checkpoint, pooled.shape[1])
    probs = head.predict(pooled, verbose=0)
    assert probs.shape == (90, 5) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    accuracy = float(np.mean(probs.argmax(axis=1) == source.y_val))
    assert accuracy == pytest.approx(checkpoint.manifest["source_val_accuracy"], abs=1 / 90)


def test_key_covers_settings_but_not_the_cache_location(tmp_path):
    cfg = tiny(tmp_path)
    folder = checkpoint_dir(BACKBONE, "digits04", cfg)
    assert folder.parent == tmp_path and folder.name.startswith("mobilenetv2-digits04-32px-")
    assert checkpoint_dir(BACKBONE, "digits04", tiny(tmp_path, epochs=2)) != folder
    assert checkpoint_dir(BACKBONE, "shapes", cfg) != folder
    assert checkpoint_dir(dataclasses.replace(BACKBONE, input_size=40), "digits04", cfg) != folder
    assert checkpoint_dir(BACKBONE, "digits04", tiny(tmp_path, min_val_accuracy=0.5)) == folder
    moved = checkpoint_dir(BACKBONE, "digits04", tiny(tmp_path / "other"))
    assert moved.name == folder.name


def test_cache_dir_defaults_to_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path))
    defaults = group_config("pretrain", "default", PretrainConfig)
    assert checkpoint_dir(BACKBONE, "digits04", defaults).parent == tmp_path / "pretrained"
    monkeypatch.delenv("TLBENCH_CACHE")
    assert str(checkpoint_dir(BACKBONE, "digits04", defaults).parent).endswith(
        os.path.join(".cache", "tlbench", "pretrained"))


def test_checkpoint_below_the_accuracy_floor_is_refused(trained):
    cfg, checkpoint = trained
    floor = min(1.0, checkpoint.manifest["source_val_accuracy"] + 0.01)
    with pytest.raises(TlbenchError, match="below pretrain.min_val_accuracy") as err:
        source_checkpoint(BACKBONE, dataclasses.replace(cfg, min_val_accuracy=floor), TRAINER)
    assert "\n" not in str(err.value) and "pretrain.epochs" in str(err.value)


def test_unknown_source_is_refused():
    with pytest.raises(TlbenchError, match="source:<name> with a name among digits04, shapes"):
        group_config("backbone", "vgg16", BackboneConfig, weights="source:imagenet21k",
                     input_size=32)


CONCURRENT = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tlbench.config import BackboneConfig, PretrainConfig, TrainerConfig, group_config
    from tlbench.pretrain import ensure_checkpoint
    checkpoint = ensure_checkpoint(
        group_config("backbone", "mobilenet", BackboneConfig, input_size=32), "digits04",
        group_config("pretrain", "default", PretrainConfig, epochs=1, seed=7,
                     cache_dir=sys.argv[1]),
        group_config("trainer", "default", TrainerConfig))
    print("cache_hit", checkpoint.cache_hit, checkpoint.manifest["weights_sha256"])
"""


def test_concurrent_workers_train_once(tmp_path):
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CONCURRENT), str(tmp_path)],
                                env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs[0][1][-2000:]
    results = [line.split() for out, _ in outputs for line in out.splitlines()
               if line.startswith("cache_hit")]
    assert sorted(hit for _, hit, _ in results) == ["False", "True"]
    assert len({sha for _, _, sha in results}) == 1
    assert sum(err.count("pretraining mobilenet on source ") for _, err in outputs) == 1


def test_first_run_prints_each_pretraining_epoch_with_the_time_left(tmp_path):
    """The first run of a source checkpoint trains it (75-90 s with the defaults): a line per
    epoch, with the time left once the first (which traces the model) is done, as the sweep's job
    lines; a second run reads it from the cache."""
    args = ["backbone.weights=source:digits04", "pretrain.epochs=3", "pretrain.min_val_accuracy=0",
            "data.input_size=32", "data.train_size=5", "trainer.epochs=1",
            "trainer.patience=null"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = tlbench(*args, cwd=tmp_path, uri=uri, TLBENCH_CACHE=str(tmp_path / "cache"))
    assert first.returncode == 0, first.stderr[-2000:]
    lines = (first.stdout + first.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if "pretraining mobilenetv2 on source " in line)
    assert "3 epochs (once; cached in" in lines[start]
    epochs = [line for line in lines if "pretraining mobilenetv2 on digits04: epoch " in line]
    assert len(epochs) == 3 and lines.index(epochs[0]) > start
    scores = r"loss \d+\.\d{4} val_accuracy \d\.\d{4}"
    assert re.search(rf"epoch 1/3 {scores} \(\d+\.\ds, tracing included\)$", epochs[0])
    assert re.search(rf"epoch 2/3 {scores} \((\d+\.\d)s\); ETA (\d+)s$", epochs[1]), epochs[1]
    assert re.search(rf"epoch 3/3 {scores} \(\d+\.\ds\)$", epochs[2]), epochs[2]
    again = tlbench(*args, "seed=1", cwd=tmp_path, uri=uri, TLBENCH_CACHE=str(tmp_path / "cache"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert ": epoch " not in again.stdout + again.stderr


@pytest.mark.slow
def test_default_digits04_pretraining_is_good():
    """The shipped pretrain settings give a strong source model (inference-mode val accuracy).
    Trained into the session's cache (tests/conftest.py), or read from it where an earlier test
    (tests/test_frozen_cache.py, tests/test_rank.py) needed the same checkpoint."""
    config = parse_config(compose_config([]))
    checkpoint = source_checkpoint(config.backbone, config.pretrain, config.trainer)
    print("source val accuracy", checkpoint.manifest["source_val_accuracy"],
          "seconds", round(checkpoint.pretrain_seconds))
    assert checkpoint.manifest["source_val_accuracy"] > 0.85
