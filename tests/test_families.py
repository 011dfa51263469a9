"""Six more backbone families through the real CLI, every strategy (random weights, each at its
minimum size: xception 71 px, the rest 32; digits 5 and 6 only, 2 images per class, 1 epoch: the
frozen caches forward 363 images per network, not 896). One multirun: about 4.5 minutes on
2 cores, most of it Keras tracing each network's whole training step for full retraining."""

from __future__ import annotations

import pytest

from .test_cli import runs_of, tlbench

FAMILIES = ["mobilenet", "mobilenetv3small", "resnet50v2", "efficientnetv2b0", "densenet121",
            "xception"]
STRATEGIES = ["feature_extraction", "partial_finetune", "full_retrain"]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Every strategy on the six families, one multirun into sqlite: its result and runs."""
    workdir = tmp_path_factory.mktemp("families")
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = tlbench("-m", "backbone=" + ",".join(FAMILIES), "strategy=" + ",".join(STRATEGIES),
                     "data.classes=[5,6]", "data.train_size=2", "trainer.epochs=1",
                     "trainer.patience=null", "backbone.weights=null", cwd=workdir, uri=uri,
                     timeout=3600)
    return result, {r.info.run_name: r for r in runs_of(uri)}


def test_every_family_finishes_every_strategy(families):
    result, runs = families
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(runs) == sorted(f"{b}-{s}-n2-s0" for b in FAMILIES for s in STRATEGIES)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


@pytest.mark.parametrize("backbone", FAMILIES)
def test_trainable_counts_rise_from_head_to_partial_to_full(families, backbone):
    runs = families[1]
    head, partial, full = (runs[f"{backbone}-{s}-n2-s0"].data.metrics["params_trainable"]
                           for s in STRATEGIES)
    assert head < partial < full


def test_partial_finetune_route_follows_the_network(families):
    """Cached cut activations where one tensor separates the stages; Xception's blocks run
    parallel branches, so its partial fine-tuning trains on images and says why."""
    result, runs = families
    inputs = {b: runs[f"{b}-partial_finetune-n2-s0"].data.tags["inputs"] for b in FAMILIES}
    assert inputs == {b: "images" if b == "xception" else "cut" for b in FAMILIES}
    assert "no single tensor separates xception's stages" in result.stdout + result.stderr
