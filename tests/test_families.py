"""Six more backbone families through the real CLI: feature extraction, partial fine-tuning and
full retraining in one multirun (random weights, each at its minimum size (xception 71 px, the
rest 32), 2 images per class, 1 epoch)."""

from __future__ import annotations

import pytest

from .test_cli import runs_of, tlbench

FAMILIES = ["mobilenet", "mobilenetv3small", "resnet50v2", "efficientnetv2b0", "densenet121",
            "xception"]
STRATEGIES = ["feature_extraction", "partial_finetune", "full_retrain"]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """One multirun over the families and the three classic strategies, into sqlite."""
    workdir = tmp_path_factory.mktemp("families")
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = tlbench("-m", "backbone=" + ",".join(FAMILIES), "strategy=" + ",".join(STRATEGIES),
                     "data.train_size=2", "trainer.epochs=1", "trainer.patience=null",
                     "backbone.weights=null", cwd=workdir, uri=uri, timeout=1800)
    return result, {r.info.run_name: r for r in runs_of(uri)}


def test_every_family_and_strategy_finishes(families):
    result, runs = families
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(runs) == sorted(f"{b}-{s}-n2-s0" for b in FAMILIES for s in STRATEGIES)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


@pytest.mark.parametrize("backbone", FAMILIES)
def test_trainable_counts_rise_with_the_strategy(families, backbone):
    _, runs = families
    trainable = [runs[f"{backbone}-{s}-n2-s0"].data.metrics["params_trainable"]
                 for s in STRATEGIES]
    assert trainable[0] < trainable[1] < trainable[2], trainable


def test_partial_finetune_route_follows_the_network(families):
    """Cached cut activations where one tensor separates the stages; Xception's blocks run
    parallel branches, so its partial fine-tuning trains on images and says why."""
    result, runs = families
    inputs = {b: runs[f"{b}-partial_finetune-n2-s0"].data.tags["inputs"] for b in FAMILIES}
    assert inputs == {b: "images" if b == "xception" else "cut" for b in FAMILIES}
    assert "no single tensor separates xception's stages" in result.stdout + result.stderr
