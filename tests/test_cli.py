"""The real CLI end to end: a Hydra multirun into sqlite, bad input, and the installed package."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.train_size=5", "trainer.epochs=1", "trainer.patience=null", "backbone.weights=null"]
METRICS = {
    "test_accuracy", "val_accuracy", "test_macro_f1", "train_accuracy", "fit_seconds",
    "first_epoch_seconds", "steady_epoch_seconds", "train_images_per_second", "setup_seconds",
    "params_total", "params_trainable", "params_non_trainable", "epochs_run", "n_train", "n_val",
    "n_test", "n_classes", "flops",
}
TAGS = {"sweep_id", "config_hash", "tlbench_version", "git_commit", "tensorflow_version",
        "keras_version", "mlflow_version", "device", "weights.kind", "command"}


def tlbench(*args: str, cwd: Path, uri: str | None = None, python: str = sys.executable,
            timeout: int = 600, **extra_env: str):
    """Run `python -m tlbench ARGS` as a user would, capturing its output."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | extra_env
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([python, "-m", "tlbench", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def runs_of(uri: str, name: str = "tlbench"):
    """Every job's run of the experiment (sweeps' parent runs left out), as MLflow returns
    them."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("tlbench.kind") != "sweep"]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """One real 4-job multirun (2 backbones x 2 strategies) into a fresh sqlite store, on digits 5
    and 6 of the default target."""
    workdir = tmp_path_factory.mktemp("multirun")
    uri = f"sqlite:///{workdir}/store/mlflow.db"
    result = tlbench("-m", "backbone=vgg16,mobilenetv2", "strategy=feature_extraction,full_retrain",
                     *TINY, "data.classes=[5,6]", cwd=workdir, uri=uri)
    return result, uri


def test_multirun_finishes_every_job(multirun):
    result, uri = multirun
    assert result.returncode == 0, result.stderr[-2000:]
    runs = runs_of(uri)
    assert sorted(r.info.run_name for r in runs) == [
        "mobilenetv2-feature_extraction-n5-s0", "mobilenetv2-full_retrain-n5-s0",
        "vgg16-feature_extraction-n5-s0", "vgg16-full_retrain-n5-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_every_run_logs_params_metrics_and_tags(multirun):
    _, uri = multirun
    runs = runs_of(uri)
    for run in runs:
        assert set(run.data.metrics) >= METRICS, run.info.run_name
        assert set(run.data.tags) >= TAGS, run.info.run_name
        params = run.data.params
        assert params["data.train_size"] == "5" and params["seed"] == "0"
        assert params["backbone.input_size"] == "32" and params["trainer.epochs"] == "1"
        assert run.data.metrics["n_train"] == 10 and run.data.metrics["n_test"] == 73  # digits 5, 6
        assert run.data.tags["command"].startswith("python -m tlbench ")
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert len({r.data.tags["config_hash"] for r in runs}) == 4


def test_trainable_counts_logged_in_order(multirun):
    _, uri = multirun
    trainable = {r.info.run_name: r.data.metrics["params_trainable"] for r in runs_of(uri)}
    for name in ("vgg16", "mobilenetv2"):
        frozen, full = (trainable[f"{name}-{strategy}-n5-s0"]
                        for strategy in ("feature_extraction", "full_retrain"))
        assert frozen < full


def test_every_run_has_artifacts_and_epoch_history(multirun):
    _, uri = multirun
    client = MlflowClient(uri)
    for run in runs_of(uri):
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "confusion_matrix.csv", "confusion_matrix.png",
                "model_summary.txt"} <= names
        history = client.get_metric_history(run.info.run_id, "epoch_loss")
        assert len(history) == run.data.metrics["epochs_run"]
    csv = Path(mlflow.artifacts.download_artifacts(
        run_id=runs_of(uri)[0].info.run_id, artifact_path="confusion_matrix.csv", tracking_uri=uri))
    rows = csv.read_text().splitlines()
    assert rows[0] == "true\\predicted,5,6"
    assert sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == 73


@pytest.fixture(scope="module")
def source_multirun(tmp_path_factory):
    """The default task (digits 5-9 from source:digits04), 1-epoch checkpoint, 3 strategies
    (partial fine-tuning reuses the checkpoint as well as full retraining would, on the cut)."""
    workdir = tmp_path_factory.mktemp("source")
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = tlbench("-m", "strategy=feature_extraction,partial_finetune,scratch",
                     "data.train_size=5", "trainer.epochs=1", "trainer.patience=null",
                     "pretrain.epochs=1", "pretrain.min_val_accuracy=0",
                     f"pretrain.cache_dir={workdir}/cache", cwd=workdir, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    return {r.info.run_name.split("-")[1]: r for r in runs_of(uri)}, uri


def test_source_weights_are_pretrained_once_and_logged(source_multirun):
    runs, uri = source_multirun
    first, second = runs["feature_extraction"], runs["partial_finetune"]
    manifest_path = mlflow.artifacts.download_artifacts(
        run_id=first.info.run_id, artifact_path="source_manifest.json", tracking_uri=uri)
    manifest = json.loads(Path(manifest_path).read_text())
    for run in (first, second):
        assert run.data.tags["weights.kind"] == "source"
        assert run.data.tags["weights.sha256"] == manifest["weights_sha256"]
        assert run.data.metrics["source_val_accuracy"] == manifest["source_val_accuracy"]
        assert run.data.params["backbone.weights"] == "source:digits04"
    assert first.data.tags["pretrain.cache_hit"] == "false"
    assert second.data.tags["pretrain.cache_hit"] == "true"
    assert second.data.metrics["pretrain_seconds"] == 0
    # Pretraining is setup, not fit: 630 source images vs 25 target images, timed apart.
    assert first.data.metrics["pretrain_seconds"] > first.data.metrics["fit_seconds"]
    assert manifest["source"] == "digits04" and manifest["input_size"] == 32


def test_scratch_control_ignores_source_weights(source_multirun):
    runs, _ = source_multirun
    scratch = runs["scratch"]
    assert scratch.data.tags["weights.kind"] == "none" and "weights.sha256" not in scratch.data.tags
    assert scratch.data.metrics["pretrain_seconds"] == 0
    assert scratch.data.metrics["n_classes"] == 5


def test_offline_imagenet_fails_the_run_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("backbone=vgg16", "backbone.weights=imagenet", *TINY[:-1], cwd=tmp_path,
                     uri=uri, KERAS_HOME=str(tmp_path / "keras"), https_proxy="http://127.0.0.1:9")
    assert_one_line_error(result, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 is not in the "
                                  "Keras cache", str(tmp_path / "keras" / "models"))
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED" and run.data.tags["weights.kind"] == "imagenet"


def assert_one_line_error(result, *fragments: str) -> None:
    """Non-zero exit, no traceback, and the message on the last stderr line: `tlbench: error:`
    with every fragment."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    assert last.startswith("tlbench: error: "), result.stderr[-1500:]
    for fragment in fragments:
        assert fragment in last, result.stderr[-1500:]


@pytest.mark.parametrize(("args", "fragments"), [
    (["backbone=resnet18"], ["Could not find 'backbone/resnet18'", "mobilenetv2", "vgg16"]),
    (["strategy=linear_probe"], ["Could not find 'strategy/linear_probe'", "partial_finetune"]),
])
def test_an_unknown_config_option_is_hydras_error_listing_the_options(tmp_path, args, fragments):
    """Hydra's own message for a config group option that does not exist: several lines (the
    options, the search path), no traceback, no run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*args, cwd=tmp_path, uri=uri)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-1500:]
    assert runs_of(uri) == []


@pytest.mark.parametrize(("args", "fragments"), [
    (["strategy=partial_finetune", "strategy.unfreeze_blocks=9"],
     ["strategy.unfreeze_blocks=9 is invalid: expected 1 to 5: mobilenetv2 has 5 stages"]),
    (["data.train_size=lots"], ["data.train_size='lots' is invalid"]),
    (["tracking.experiment="], ["tracking.experiment='' is invalid: expected a name of 1 to 500"]),
    (["tracking.run_name="], ["tracking.run_name='' is invalid: expected a name"]),
])
def test_config_errors_are_one_line_and_leave_no_run(tmp_path, args, fragments):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*args, cwd=tmp_path, uri=uri)
    assert_one_line_error(result, *fragments)
    assert runs_of(uri) == []


def test_unwritable_tracking_location(tmp_path):
    (tmp_path / "file").write_text("")
    result = tlbench(f"tracking.uri=sqlite:///{tmp_path}/file/mlflow.db", cwd=tmp_path)
    assert_one_line_error(result, "cannot write to", "MLFLOW_TRACKING_URI")
    assert result.stderr.strip().splitlines()[-1].startswith("tlbench: error: tracking.uri=")


@pytest.mark.parametrize("multirun", [[], ["-m", "data.train_size=2,3"]])
def test_a_file_that_is_not_a_store_is_one_line_before_any_job(tmp_path, multirun):
    (tmp_path / "mlflow.db").write_text("notes, not a database")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*multirun, "backbone=pixels", cwd=tmp_path, uri=uri)
    assert_one_line_error(result, "is not a usable MLflow store (file is not a database)")
    assert result.stderr.strip().splitlines()[-1].startswith("tlbench: error: tracking.uri=")
    assert "Launching" not in result.stderr + result.stdout


def test_a_blank_experiment_is_one_line_before_any_job(tmp_path):
    """MLflow refuses the name: the sweep stops before launching (it warned, then failed every
    job with MLflow's exception)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", "tracking.experiment=", "seed=0,1", cwd=tmp_path, uri=uri)
    assert_one_line_error(result)
    assert result.stderr.strip().splitlines()[-1] == (
        "tlbench: error: tracking.experiment='' is invalid: expected a name of 1 to 500 "
        "characters (MLflow's limit).")
    assert "Launching" not in result.stderr + result.stdout


@pytest.mark.parametrize(("key", "weights"), [("cache.dir", "null"),
                                              ("pretrain.cache_dir", "source:digits04")])
def test_a_cache_folder_that_cannot_be_written_is_one_line_and_leaves_no_run(tmp_path, key,
                                                                             weights):
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "cache"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(f"{key}={folder}", f"backbone.weights={weights}", cwd=tmp_path, uri=uri)
    assert_one_line_error(result)
    assert result.stderr.strip().splitlines()[-1] == (
        f"tlbench: error: {key}={folder}: cannot write there (Not a directory); set {key} or "
        "$TLBENCH_CACHE to a writable folder.")
    assert runs_of(uri) == []


@pytest.mark.parametrize(("args", "key"), [(["-m", "seed=0,1"], "hydra.sweep.dir"),
                                           ([], "hydra.run.dir")])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_run(tmp_path, args, key):
    """Hydra failed to create it with a traceback (a sweep's parent run already opened)."""
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "out"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench(*args, f"{key}={folder}", "backbone=pixels", cwd=tmp_path, uri=uri)
    assert_one_line_error(result)
    assert result.stderr.strip().splitlines()[-1] == (
        f"tlbench: error: {key}={folder}: cannot write there (Not a directory); pass a writable "
        "folder.")
    assert MlflowClient(uri).get_experiment_by_name("tlbench") is None  # no run, no parent


def test_out_of_memory_is_one_line_saying_what_to_lower(tmp_path):
    """Images held at 4096 px (a typo for 40): NumPy cannot allocate a chunk of them (48 GiB).
    The address space is capped, so the test never depends on this machine's memory."""
    limit = 12 * 2**30  # TensorFlow starts within it

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", "backbone.input_size=4096", "backbone.weights=null"],
        cwd=tmp_path, text=True, capture_output=True, timeout=600, preexec_fn=capped,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        | {"MLFLOW_TRACKING_URI": uri})
    assert_one_line_error(result)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tlbench: error: out of memory: Unable to allocate 48.0 GiB"), last
    assert last.endswith("lower backbone.input_size (images are held at it), trainer.batch_size "
                         "or data.train_size.")
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED" and "MemoryError" in run.data.tags["error"]


def test_unreachable_size_leaves_a_failed_run_with_the_reason(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("backbone=vgg16", "backbone.weights=null", "data.train_size=500", cwd=tmp_path,
                     uri=uri)
    last = result.stderr.strip().splitlines()[-1]
    assert_one_line_error(result)
    assert last.startswith("tlbench: error: data.train_size=500 per class is more than the pool")
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED"
    assert "data.train_size=500" in run.data.tags["error"]


def test_installed_wheel_finds_its_configs(tmp_path):
    """Outside the source tree, from a built wheel (every module of tlbench/ in it, the stage
    packages included), Hydra still composes the packaged conf/."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    wheels = [str(path) for path in dist.glob("*.whl")]
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", *wheels],
                   check=True, capture_output=True, timeout=300)
    for module in ("tlbench", "hydra_plugins.tlbench_sweeper"):
        where = subprocess.run([python, "-c", f"import {module} as m; print(m.__file__)"],
                               cwd=tmp_path, text=True, capture_output=True, check=True).stdout
        assert where.startswith(str(venv)), where
    listing = "import pathlib, tlbench; top = pathlib.Path(tlbench.__file__).parent; " \
              "print(*sorted(str(p.relative_to(top)) for p in top.rglob('*.py')))"
    installed = subprocess.run([python, "-c", listing], cwd=tmp_path, text=True,
                               capture_output=True, check=True).stdout.split()
    assert {str(p.relative_to(ROOT / "tlbench"))
            for p in (ROOT / "tlbench").rglob("*.py")} - set(installed) == set()
    result = tlbench("backbone=resnet50", "strategy=partial_finetune", "--cfg", "job",
                     cwd=tmp_path, python=python)
    assert result.returncode == 0, result.stderr
    assert "name: resnet50" in result.stdout and "unfreeze_blocks: 1" in result.stdout
    result = tlbench("-m", "seed=0,1", "dry_run=true", cwd=tmp_path, python=python,
                     uri=f"sqlite:///{tmp_path}/mlflow.db")  # its sweeper, hydra/sweeper=tlbench
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dry run: 2 to run, 0 to skip" in result.stdout


def test_report_ranks_the_real_multirun(multirun, tmp_path):
    _, uri = multirun
    result = subprocess.run([sys.executable, "-m", "tlbench", "report", "--tracking-uri", uri,
                             "--out", str(tmp_path)], text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (report,) = tmp_path.glob("*.md")
    text = report.read_text()
    for name in ("vgg16", "mobilenetv2", "feature\\_extraction", "full\\_retrain"):
        assert name in text
    assert "- **Classes:** 5, 6" in text  # the kept digits' names, not their labels 0, 1
    assert len(list(tmp_path.glob("*.png"))) >= 3


def closing_commands(stdout: str) -> tuple[str, dict[str, list[str]], list[str]]:
    """The last three lines of a run's or sweep's output: `next:`, the MLflow UI command (its
    link's path and query parsed) and the report command (split as a shell would)."""
    import shlex
    from urllib.parse import parse_qs, urlsplit

    messages = [re.sub(r"^(\[[^]]*\])+ (- )?", "", line).strip() for line in stdout.splitlines()]
    *_, head, ui, report = messages  # log lines: a job's, or (after a sweep) Hydra's format
    assert head == "next:", stdout[-1500:]
    link = urlsplit(ui.split()[-1])
    assert link.netloc == "127.0.0.1:5000" and link.path == "/"
    path, _, query = link.fragment.partition("?")
    return path, parse_qs(query), shlex.split(report)


def test_a_sweep_ends_with_its_runs_table_link_and_its_report_command(multirun, tmp_path):
    result, uri = multirun
    path, query, report = closing_commands(result.stdout)
    assert f"  mlflow ui --backend-store-uri {uri}   # then open http://127.0.0.1:5000/#/" \
           in result.stdout.splitlines()[-2]
    runs = runs_of(uri)
    sweep_id = runs[0].data.tags["sweep_id"]
    assert path == f"/experiments/{runs[0].info.experiment_id}/runs"
    assert query == {"workflowType": ["machine_learning"],
                     "orderByKey": ["metrics.`test_accuracy`"], "orderByAsc": ["false"],
                     "searchFilter": [f"tags.sweep_id = '{sweep_id}'"]}
    assert report == ["python", "-m", "tlbench", "report", "--experiment", "tlbench", "--sweep",
                      sweep_id]  # the sweep's store is $MLFLOW_TRACKING_URI, as the report's
    done = tlbench(*report[3:], "--out", str(tmp_path), cwd=tmp_path, uri=uri)
    assert done.returncode == 0, done.stderr[-1500:]
    assert (tmp_path / f"tlbench-{sweep_id}.md").is_file()


def test_a_single_run_ends_with_its_runs_table_link_and_its_report_command(tmp_path):
    """Also when it is skipped as already FINISHED; with the default store, the report needs no
    --tracking-uri."""
    args = ["backbone=pixels", "backbone.weights=null", "data.input_size=32", *TINY[:-1]]
    for _ in ("trained", "skipped"):
        result = tlbench(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        path, query, report = closing_commands(result.stdout)
        (run,) = runs_of(f"sqlite:///{tmp_path}/mlflow.db")
        assert path == f"/experiments/{run.info.experiment_id}/runs"
        assert query["searchFilter"] == [f"tags.sweep_id = '{run.data.tags['sweep_id']}'"]
        assert report == ["python", "-m", "tlbench", "report", "--experiment", "tlbench",
                          "--sweep", run.data.tags["sweep_id"]]
    assert "skipped" in result.stdout
    done = tlbench(*report[3:], "--out", "reports", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-1500:]
    assert len(list((tmp_path / "reports").glob("*.md"))) == 1
