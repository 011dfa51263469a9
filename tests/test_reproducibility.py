"""The same configuration gives the same numbers (`trainer.deterministic=true`, the default),
through the real CLI: in two processes, as a job of a sweep and alone, with its frozen outputs
computed or read from the cache, on TensorFlow, JAX and PyTorch."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from .test_backends import cli_without_tensorflow
from .test_cli import runs_of, tlbench

# Two epochs of a head with dropout, on digits 5 and 6 at 32 px: each draw that is not seeded
# (weights, shuffles, dropout masks) changes these numbers.
TINY = [
    "data.train_size=20",
    "data.classes=[5,6]",
    "trainer.epochs=2",
    "trainer.patience=null",
    "backbone.weights=null",
    "backbone=mobilenetv3small",
    "seed=2",
]
STRATEGIES = ("feature_extraction", "partial_finetune")
RESULTS = ("train_accuracy", "val_accuracy", "test_accuracy", "test_macro_f1")
HISTORIES = ("epoch_loss", "epoch_val_loss")


def numbers(uri: str) -> dict[str, dict]:
    """Each strategy's run in a store: its accuracies and per-epoch losses, as logged."""
    client = MlflowClient(uri)
    found = {}
    for run in runs_of(uri):
        history = {
            key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
            for key in HISTORIES
        }
        found[run.data.params["strategy.name"]] = {
            key: run.data.metrics[key] for key in RESULTS
        } | history
    return found


def cache_hits(uri: str) -> set[float]:
    """The runs' `cache_hit` metrics: 1 when every frozen output was read from the cache."""
    return {run.data.metrics["cache_hit"] for run in runs_of(uri)}


def test_tensorflow_gives_the_same_numbers_in_processes_sweeps_and_alone(tmp_path):
    """Three processes share one feature cache (the first computes it, the others read it): a
    sweep, the same sweep in the other order, and partial_finetune alone."""
    cache = {"TLBENCH_CACHE": str(tmp_path / "cache")}
    stores = {name: f"sqlite:///{tmp_path}/{name}.db" for name in ("sweep", "reversed", "alone")}
    grids = {
        "sweep": ["-m", f"strategy={','.join(STRATEGIES)}"],
        "reversed": ["-m", f"strategy={','.join(reversed(STRATEGIES))}"],
        "alone": ["strategy=partial_finetune"],
    }
    for name, grid in grids.items():
        result = tlbench(*grid, *TINY, cwd=tmp_path, uri=stores[name], **cache)
        assert result.returncode == 0, result.stderr[-2000:]
    found = {name: numbers(uri) for name, uri in stores.items()}
    assert found["sweep"] == found["reversed"]
    assert found["alone"]["partial_finetune"] == found["sweep"]["partial_finetune"]
    assert cache_hits(stores["sweep"]) == {0.0} and cache_hits(stores["reversed"]) == {1.0}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_give_the_same_numbers_in_two_processes(tmp_path, backend):
    """Two processes, each a sweep of both strategies (in opposite orders), TensorFlow
    unimportable; the second reads the frozen outputs the first computed."""
    cache = tmp_path / "cache"
    found = []
    for order in (STRATEGIES, tuple(reversed(STRATEGIES))):
        uri = f"sqlite:///{tmp_path}/{len(found)}.db"
        result = cli_without_tensorflow(
            "-m",
            f"strategy={','.join(order)}",
            *TINY,
            cwd=tmp_path,
            uri=uri,
            backend=backend,
            TLBENCH_CACHE=str(cache),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        found.append(numbers(uri))
    assert set(found[0]) == set(STRATEGIES)
    assert found[0] == found[1]
