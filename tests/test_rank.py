"""`python -m tlbench rank` end to end: score runs in a real sqlite store, the feature cache shared
with the sweep, LEEP from a source checkpoint's head, the report's join, and bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlbench import rank, scores
from tlbench.config import parse_config
from tlbench.tracking import identity

from .conftest import compose_config

TINY = ["data.train_size=5", "backbone.weights=null"]
BACKBONES = ["mobilenetv2", "pixels", "vgg16"]
SCORE_METRICS = {"logme", "hscore", "feature_seconds", "score_seconds", "setup_seconds",
                 "frozen_rows_computed", "cache_hit", "n_train", "n_classes", "n_features",
                 "pretrain_seconds"}


def tlbench(*args: str, cwd: Path, cache: Path, uri: str) -> subprocess.CompletedProcess:
    """`python -m tlbench ARGS` as a user runs it, with a private cache and tracking store."""
    env = os.environ | {"TLBENCH_CACHE": str(cache), "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, "-m", "tlbench", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)


def runs_of(uri: str, kind: str | None = "score"):
    """Runs of the tlbench experiment (score runs only by default), oldest first."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tlbench")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if kind is None or r.data.tags.get("tlbench.kind") == kind]


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """The rank command run twice over 3 backbones with random weights into a fresh store."""
    workdir = tmp_path_factory.mktemp("rank")
    uri, cache = f"sqlite:///{workdir}/mlflow.db", workdir / "cache"
    first = tlbench("rank", f"backbone={','.join(BACKBONES)}", *TINY, cwd=workdir, cache=cache,
                    uri=uri)
    assert first.returncode == 0, first.stderr[-2000:]
    second = tlbench("rank", f"backbone={','.join(BACKBONES)}", *TINY, cwd=workdir, cache=cache,
                     uri=uri)
    assert second.returncode == 0, second.stderr[-2000:]
    return {"first": first, "second": second, "uri": uri, "workdir": workdir, "cache": cache}


def test_table_orders_backbones_by_each_score(ranked):
    out = ranked["first"].stdout
    assert "Scores on data digits (classes 5,6,7,8,9), 32px, train_size=5, seed=0" in out
    logged = {r.data.params["backbone.name"]: r.data.metrics for r in runs_of(ranked["uri"])[:3]}
    for score in ("logme", "hscore"):
        (line,) = [line for line in out.splitlines() if line.startswith(f"    {score} ")]
        order = [name.split(" (")[0] for name in line.split(None, 1)[1].split(" > ")]
        assert order == sorted(BACKBONES, key=lambda b, s=score: -logged[b][s])
    assert re.search(r"leep\s+–\s+\(not for: mobilenetv2 \(null\), pixels \(null\), "
                     r"vgg16 \(null\); no source classifier\)", out)


def test_every_candidate_is_a_finished_score_run(ranked):
    runs = runs_of(ranked["uri"])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert [r.info.run_name for r in runs[:3]] == [f"score-{b}-n5-s0" for b in BACKBONES]
    for run in runs:
        assert set(run.data.metrics) >= SCORE_METRICS, run.info.run_name
        assert "leep" not in run.data.metrics and "nce" not in run.data.metrics
        assert run.data.metrics["n_train"] == 25 and run.data.metrics["n_classes"] == 5
        assert run.data.tags["weights.kind"] == "none"
        assert run.data.tags["scores.skipped"].startswith("leep, nce: random weights")
        assert run.data.tags["command"].startswith("python -m tlbench.rank backbone=")
        params = run.data.params
        assert params["data.train_size"] == "5" and params["seed"] == "0"
        assert not any(k.startswith(("strategy.", "trainer.", "tracking.")) for k in params)
    trained = identity.config_hash(parse_config(compose_config(
        ["backbone=vgg16", *TINY, "strategy=feature_extraction"])))
    assert trained not in {r.data.tags["config_hash"] for r in runs}


def test_second_invocation_reads_the_feature_cache(ranked):
    runs = runs_of(ranked["uri"])
    first, second = runs[:3], runs[3:]
    assert all(r.data.metrics["frozen_rows_computed"] > 0 for r in first)
    assert all(r.data.metrics["frozen_rows_computed"] == 0 for r in second)
    assert all(r.data.metrics["cache_hit"] == 1 for r in second)
    for before, after in zip(first, second, strict=True):
        for score in ("logme", "hscore"):
            assert after.data.metrics[score] == before.data.metrics[score]


def test_sweep_reuses_the_features_and_the_report_joins_the_scores(ranked):
    """Real trained runs of a tiny sweep on the same backbones: their features come from the
    cache the rank command filled, and the report sets the scores beside their accuracy."""
    workdir, cache, uri = ranked["workdir"], ranked["cache"], ranked["uri"]
    sweep = tlbench("-m", f"backbone={','.join(BACKBONES)}", *TINY, "trainer.epochs=1",
                    "trainer.patience=null", cwd=workdir, cache=cache, uri=uri)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    trained = runs_of(uri, kind=None)[-3:]
    assert all(r.data.metrics["cache_hit"] == 1 for r in trained)
    report = tlbench("report", "--out", str(workdir / "reports"), cwd=workdir, cache=cache,
                     uri=uri)
    assert report.returncode == 0, report.stderr[-2000:]
    (path,) = (workdir / "reports").glob("*.md")
    markdown = path.read_text(encoding="utf-8")
    assert "- **Runs:** 3: 3 finished" in markdown  # the 6 score runs stay out
    section = markdown.split("## Scores before training vs accuracy after")[1].split("\n## ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith(r"| feature\_extraction")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3"
    for cell in cells[3:5]:  # logme, hscore: a tau over 3 backbones (or tied accuracies)
        assert re.fullmatch(r"[+-]\d\.\d\d \(p=\d\.\d\d\)|undefined \(constant\)", cell), cell
    assert cells[5:7] == ["not meaningful (0 backbones)"] * 2
    assert re.fullmatch(r"[+-]\d\.\d\d \(p=\d\.\d\d\)|undefined \(constant\)", cells[7]), cells[7]
    assert re.search(r"!\[Scores vs test\\_accuracy\]\(.*scores-vs-accuracy\.png\)", section)


def test_leep_and_nce_read_the_source_checkpoint_head(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # The default source checkpoint, in the session's cache (shared with test_frozen_cache.py)
    overrides = ["backbone=mobilenetv2", "backbone.weights=source:digits04", "data.train_size=5",
                 f"cache.dir={tmp_path}/features", f"tracking.uri={uri}"]
    assert rank.main(overrides) == 0
    assert re.search(r"leep\s+mobilenetv2 \(source:digits04\)\n", capsys.readouterr().out)
    (run,) = runs_of(uri)
    metrics = run.data.metrics
    assert run.data.tags["weights.kind"] == "source" and "scores.skipped" not in run.data.tags
    # Independently: the whole source model (base + head, inference mode) on the target images.
    import keras

    from tlbench import backbone, data, pretrain, strategy

    config = parse_config(compose_config(overrides))
    checkpoint = pretrain.source_checkpoint(config.backbone, config.pretrain, config.trainer)
    spec = backbone.BACKBONES["mobilenetv2"]
    keras.backend.clear_session()
    base = backbone.build_base(spec, 32, str(checkpoint.weights_path), 0.9)
    dense = pretrain.source_head_config()
    classifier = strategy.head_layers(5, dense)
    model = backbone.on_pixels(spec, strategy.with_head(base, 5, dense, base_training=False,
                                                         classifier=classifier))
    classifier.load_weights(checkpoint.weights_path.parent / pretrain.HEAD_FILE)
    target = data.load_dataset(config.data, 32, config.seed)
    probs = model.predict(target.x_train.load(), verbose=0)
    assert metrics["leep"] == pytest.approx(scores.leep(probs, target.y_train), abs=1e-4)
    assert metrics["nce"] == pytest.approx(scores.nce(np.argmax(probs, axis=1), target.y_train),
                                           abs=1e-6)
    assert metrics["leep"] < 0 and metrics["nce"] <= 0
    assert metrics["source_val_accuracy"] == checkpoint.manifest["source_val_accuracy"]


def test_a_failing_candidate_is_logged_failed_and_the_others_still_scored(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    missing = tmp_path / "missing.weights.h5"
    assert rank.main(["backbone=pixels,vgg16", f"backbone.weights={missing}",
                      "data.train_size=5", f"cache.dir={tmp_path}/features",
                      f"tracking.uri={uri}"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"vgg16 \(.*missing\.weights\.h5\)\s+FAILED: backbone.weights=.*no such file",
                     out)
    runs = {r.info.run_name: r for r in runs_of(uri)}
    assert runs["score-pixels-n5-s0"].info.status == "FINISHED"
    assert runs["score-vgg16-n5-s0"].info.status == "FAILED"
    assert "no such file" in runs["score-vgg16-n5-s0"].data.tags["error"]


@pytest.mark.parametrize(("args", "message"), [
    (["backbone=resnet50,alexnet"], "Could not find 'backbone/alexnet'"),
    (["trainer.lr=0.1,0.2"], "trainer.lr=0.1,0.2: lists are accepted only for backbone, "
                             "backbone.weights, data, data.train_size, seed"),
    (["data.train_size=five"], "data.train_size='five' is invalid"),
    (["tracking.uri=http://127.0.0.1:9"], "tracking server unreachable"),
    (["backbone=vgg16", "backbone.weights=source:imagenet21k"], "source:<name> with a name among"),
])
def test_bad_input_is_one_line_and_no_run(tmp_path, capsys, args, message):
    assert rank.main([*args, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
                     if not any(a.startswith("tracking.uri") for a in args) else args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tlbench.rank: error: ") and message in err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_suites_tasks_are_scored_one_candidate_each():
    combinations = rank.expand(["data=offline/shapes4,offline/shapes10", "backbone=pixels,vgg16"])
    assert combinations[:2] == [["data=offline/shapes4", "backbone=pixels"],
                                ["data=offline/shapes4", "backbone=vgg16"]]
    assert len(combinations) == 4


def test_help_prints_usage(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tlbench", "rank", "--help"], cwd=tmp_path,
                          text=True, capture_output=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m tlbench.rank")
    for word in ("logme", "LEEP", "data.train_size and seed", "tlbench.kind"):
        assert word.lower() in done.stdout.lower()
