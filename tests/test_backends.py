"""Backends and precision: the real CLI on JAX with TensorFlow made unimportable, mixed precision
on TensorFlow, the backend in a run's identity, and backend-neutral resizing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import backend_or_skip, build_run
from tests.test_train import EASY, run_as_the_cli_does
from tlbench import runtime
from tlbench.errors import TlbenchError
from tlbench.tracking import runs
from tlbench.training.train import train_and_evaluate

TINY = ["data.train_size=5", "trainer.epochs=1", "trainer.patience=null", "backbone.weights=null"]
BLOCK_TENSORFLOW = """
import importlib.machinery, runpy, sys

class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            return None  # as if not installed: import raises, find_spec says None
        return super().find_spec(name, path, target)

sys.meta_path = [PathFinderWithoutTensorFlow if finder is importlib.machinery.PathFinder
                 else finder for finder in sys.meta_path]
sys.argv = ["tlbench", *sys.argv[1:]]
try:
    runpy.run_module("tlbench", run_name="__main__")
finally:
    assert "tensorflow" not in sys.modules
"""


def cli_without_tensorflow(*args: str, cwd: Path, uri: str, backend: str = "jax",
                           **extra_env: str):
    """`python -m tlbench ARGS` on another Keras backend, where importing TensorFlow fails."""
    backend_or_skip(backend)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "KERAS_BACKEND": backend, "MLFLOW_TRACKING_URI": uri} | extra_env
    return subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW, *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def jax_sweep(tmp_path_factory):
    """Feature extraction and partial fine-tuning on JAX, then the same multirun again (resumed),
    then a report and a rank: all with TensorFlow unimportable, on digits 5 and 6 only (363 images
    through the base, not 896). (full_retrain on JAX is in benchmarks/accelerator.py: 35 s more
    here.)"""
    workdir = tmp_path_factory.mktemp("jax")
    uri = f"sqlite:///{workdir}/mlflow.db"
    grid = ["-m", "strategy=feature_extraction,partial_finetune", *TINY, "data.classes=[5,6]"]
    results = {"sweep": cli_without_tensorflow(*grid, cwd=workdir, uri=uri),
               "resume": cli_without_tensorflow(*grid, cwd=workdir, uri=uri),
               "report": cli_without_tensorflow("report", "--out", "reports", cwd=workdir,
                                                uri=uri),
               "rank": cli_without_tensorflow("rank", *TINY[:1], *TINY[3:], "data.classes=[5,6]",
                                              cwd=workdir, uri=uri)}
    return results, uri, workdir


def test_jax_runs_every_strategy_without_tensorflow(jax_sweep):
    results, uri, _ = jax_sweep
    assert results["sweep"].returncode == 0, results["sweep"].stderr[-2000:]
    client = MlflowClient(uri)
    runs = [run for run in client.search_runs(
        [client.get_experiment_by_name("tlbench").experiment_id]) if "strategy.name" in
        run.data.params]  # score runs (rank) have no strategy
    trainable = {r.data.params["strategy.name"]: r.data.metrics["params_trainable"]
                 for r in runs if r.info.status == "FINISHED"}
    assert trainable["feature_extraction"] < trainable["partial_finetune"]
    for run in runs:
        tags = run.data.tags
        assert (tags["keras_backend"], tags["accelerator.kind"], tags["precision"]) == \
            ("jax", "cpu", "float32")
        assert int(tags["accelerator.count"]) == 1 and tags["accelerator.name"]
        assert "jax_version" in tags and "tensorflow_version" not in tags
        assert run.data.params["keras_backend"] == "jax"


def test_jax_resume_report_and_rank_without_tensorflow(jax_sweep):
    results, _, workdir = jax_sweep
    resumed = results["resume"].stdout + results["resume"].stderr
    assert "0 done, 2 skipped" in resumed, resumed[-2000:]
    assert results["report"].returncode == 0, results["report"].stderr[-2000:]
    report = next((workdir / "reports").glob("*.md")).read_text()
    assert "jax" in report
    assert results["rank"].returncode == 0, results["rank"].stderr[-2000:]
    assert "logme" in results["rank"].stdout


def test_torch_runs_every_strategy_without_tensorflow(tmp_path):
    """Frozen, partly frozen and whole-network training on PyTorch, where it is installed (`pip
    install -e '.[torch]'`); only the rows the runs use are cached (fill_limit=0), and only digits 5
    and 6 are kept, to save time."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli_without_tensorflow("-m", "strategy=feature_extraction,partial_finetune,"
                                    "full_retrain", *TINY, "data.classes=[5,6]",
                                    "cache.fill_limit=0", cwd=tmp_path, uri=uri, backend="torch")
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(uri)
    runs = [run for run in client.search_runs([client.get_experiment_by_name(
        "tlbench").experiment_id]) if "strategy.name" in run.data.params]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {(run.data.tags["keras_backend"], run.data.params["keras_backend"]) for run in runs} \
        == {("torch", "torch")}
    assert all("torch_version" in run.data.tags and "tensorflow_version" not in run.data.tags
               for run in runs)
    trainable = {run.data.params["strategy.name"]: run.data.metrics["params_trainable"]
                 for run in runs}
    assert trainable["feature_extraction"] < trainable["partial_finetune"] < \
        trainable["full_retrain"]


def test_a_required_backend_that_is_missing_fails_instead_of_skipping(monkeypatch):
    monkeypatch.delenv("TLBENCH_REQUIRE_BACKENDS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        backend_or_skip("no_such_backend")
    monkeypatch.setenv("TLBENCH_REQUIRE_BACKENDS", "jax no_such_backend")
    with pytest.raises(ModuleNotFoundError, match="no_such_backend"):
        backend_or_skip("no_such_backend")


JAX_POOL = """
import os, sys
from tlbench import runtime
from tlbench.quiet import import_keras
runtime.cap_threads_before_start(int(sys.argv[1]))
import_keras()
import keras
keras.ops.matmul(keras.ops.ones((64, 64)), keras.ops.ones((64, 64)))
names = [open(f"/proc/self/task/{task}/comm").read() for task in os.listdir("/proc/self/task")]
print(sum("XLAEigen" in name for name in names))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_trainer_threads_sizes_the_jax_cpu_pool():
    backend_or_skip("jax")
    threads = (os.cpu_count() or 1) + 1  # JAX's own default is one thread per core
    env = {k: v for k, v in os.environ.items() if k != "PJRT_NPROC"} | {
        "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", JAX_POOL, str(threads)], env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(threads)


def test_tfds_on_jax_without_tensorflow_is_one_line(tmp_path):
    result = cli_without_tensorflow("data=tfds", "data.dataset=mnist", *TINY, cwd=tmp_path,
                                    uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "data=tfds needs" in result.stderr


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_probabilities(tiny_config, precision):
    config = tiny_config("strategy=feature_extraction", "cache.enabled=false",
                         f"trainer.precision={precision}")
    dataset, plan = build_run(config)
    train_and_evaluate(plan, {"images": dataset}, config.trainer, config.seed)
    assert plan.model.dtype_policy.name == precision
    assert plan.model.output.dtype == "float32"  # the softmax stays float32
    scaled = isinstance(plan.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")  # loss scaling only for float16
    metrics = run_as_the_cli_does(tiny_config(*EASY, f"trainer.precision={precision}")).metrics
    assert metrics["test_accuracy"] > 0.8  # it learns as in float32 (chance is 0.5)
    keras.mixed_precision.set_dtype_policy("float32")


def test_precision_keys_the_feature_cache(tiny_config, tmp_path):
    from tlbench.frozen.cache import entry_dir, entry_key
    from tlbench.registry import BACKBONES

    keys = [entry_key(BACKBONES["mobilenetv2"], "w", "d", 32, "pooled", precision, "tensorflow")
            for precision in ("float32", "mixed_bfloat16")]
    assert entry_dir(tmp_path, keys[0]) != entry_dir(tmp_path, keys[1])


@pytest.mark.parametrize(("key", "value"), [("precision", "float64"), ("jit_compile", "maybe")])
def test_bad_precision_or_jit_compile_is_one_line(tiny_config, key, value):
    with pytest.raises(TlbenchError, match=f"trainer.{key}='{value}' is invalid"):
        tiny_config(f"trainer.{key}={value}")


def test_backend_is_part_of_the_identity(tiny_config):
    identity = runs.identity(tiny_config())
    assert identity["keras_backend"] == keras.backend.backend() == runtime.backend()


@pytest.mark.parametrize("how", ["env", "keras.json"])
def test_backend_is_read_as_keras_reads_it(tmp_path, how):
    """Before Keras is imported (a skipped run never imports it) and after, the same answer."""
    backend_or_skip("jax")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | {
        "KERAS_HOME": str(tmp_path)}
    if how == "env":
        env["KERAS_BACKEND"] = "jax"
    else:
        (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    code = ("from tlbench import runtime; before = runtime.backend(); import keras; "
            "print(before, runtime.backend(), keras.backend.backend())")
    out = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["jax", "jax", "jax"]


@pytest.mark.parametrize("command", [[], ["rank"]])
def test_a_backend_that_cannot_train_is_one_line_before_any_run(tmp_path, command):
    """KERAS_BACKEND=numpy (Keras' inference-only backend) stops a run or a ranking with one
    line naming the backends tlbench runs on, before any MLflow run is created."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = os.environ | {"KERAS_BACKEND": "numpy", "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run([sys.executable, "-m", "tlbench", *command, "data=digits59"],
                            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "Keras backend 'numpy' (KERAS_BACKEND, else keras.json) is not one tlbench runs on: "
        "set KERAS_BACKEND to tensorflow, jax, torch"), result.stderr[-1500:]
    client = MlflowClient(uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_resize_matches_tensorflow_bilinear():
    """On TensorFlow, keras.ops resizing is tf.image.resize's (same numbers as before)."""
    import tensorflow as tf

    from tlbench.data import resize

    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    expected = np.clip(tf.image.resize(images.astype(np.float32), (32, 32)).numpy(), 0, 255)
    np.testing.assert_array_equal(resize(images, 32), expected)


def test_seeding_sets_every_generator_as_keras_does_without_restarting_tensorflows_kernels():
    """runtime.set_random_seed leaves Python, NumPy, Keras' generators, TensorFlow's global seed
    and a seeded tf.data shuffle where keras.utils.set_random_seed does; it and
    runtime.clear_session keep TensorFlow's kernel cache (a stateful kernel goes on instead of
    restarting)."""
    import random

    import tensorflow as tf

    def draws(seed_with):
        seed_with(3)
        shuffled = tf.data.Dataset.range(8).shuffle(8, seed=1)
        return (random.random(), float(np.random.rand()), float(keras.random.uniform(())),
                tf.compat.v1.random.get_seed(None), [int(v) for v in shuffled])

    assert draws(runtime.set_random_seed) == draws(keras.utils.set_random_seed)

    def stateful_twice(seed_with):
        seed_with(0)
        first = float(tf.random.uniform((), seed=5))
        seed_with(0)
        return first, float(tf.random.uniform((), seed=5))

    restarted, kept = stateful_twice(keras.utils.set_random_seed), stateful_twice(
        runtime.set_random_seed)
    assert restarted[0] == restarted[1] and kept[0] != kept[1]
    cleared = stateful_twice(lambda seed: (keras.backend.clear_session(),
                                           runtime.set_random_seed(seed)))
    kept = stateful_twice(lambda seed: (runtime.clear_session(), runtime.set_random_seed(seed)))
    assert cleared[0] == cleared[1] and kept[0] != kept[1]
