"""Where a run computes: the Keras backend, the accelerator it sees, seeds, threads, determinism
and the precision policy.

The backend is Keras' own choice (`KERAS_BACKEND`, else `~/.keras/keras.json`, else tensorflow),
fixed for the life of a process. Everything that differs between backends is here, and each
backend's library is imported only on that backend: on JAX or PyTorch nothing imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from tlbench import compat
from tlbench.errors import TlbenchError

BACKENDS = ("tensorflow", "jax", "torch")


@dataclass(frozen=True)
class Accelerator:
    """The devices a backend computes on: kind (cpu, gpu, tpu), model name and how many."""

    kind: str
    name: str
    count: int


def backend() -> str:
    """The Keras backend of this process: tensorflow, jax or torch; another (Keras' numpy or
    openvino backends, which cannot train) is refused in one line."""
    name = configured_backend()
    if name not in BACKENDS:
        raise TlbenchError(f"Keras backend {name!r} (KERAS_BACKEND, else keras.json) is not one "
                           f"tlbench runs on: set KERAS_BACKEND to {', '.join(BACKENDS)}")
    return name


def configured_backend() -> str:
    """The Keras backend named for this process, read as Keras reads it (KERAS_BACKEND, else
    keras.json, else tensorflow) until Keras is imported, so that a skipped or planned run does
    not pay for importing the backend."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def backend_version(name: str) -> str:
    """The version of the backend's library."""
    import importlib

    return importlib.import_module(name).__version__


def accelerator() -> Accelerator:
    """The backend's accelerators, or this machine's CPU when it has none."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return Accelerator("gpu", details.get("device_name", "GPU"), len(gpus))
    elif name == "jax":
        import jax

        devices = jax.devices()
        if devices[0].platform != "cpu":
            return Accelerator(devices[0].platform, devices[0].device_kind, len(devices))
    elif name == "torch":
        import torch

        if torch.cuda.is_available():
            return Accelerator("gpu", torch.cuda.get_device_name(0), torch.cuda.device_count())
    return Accelerator("cpu", cpu_name(), 1)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_tags(precision: str) -> dict[str, str]:
    """Backend, its version, Keras' version, the accelerator and the precision, as run tags."""
    import keras

    name, device = backend(), accelerator()
    return {
        "keras_backend": name,
        f"{name}_version": backend_version(name),
        "keras_version": keras.__version__,
        "accelerator.kind": device.kind,
        "accelerator.name": device.name,
        "accelerator.count": str(device.count),
        "accelerator": f"{device.kind}: {device.name} x{device.count}",
        "device": device.kind if device.kind == "cpu" else f"{device.kind} x{device.count}",
        "precision": precision,
    }


CONFIGURED_RUNS = 0
"""Runs `configure` has prepared in this process."""


def configure(precision: str, deterministic: bool, seed: int, threads: int | None) -> None:
    """Before building a model: free earlier runs' traced graphs, make ops deterministic if asked,
    seed Python, NumPy and the backend, cap its thread pools and set the dtype policy. The
    garbage collection is skipped for a process's first run: there it scanned everything
    imported, for 0.4 s, and found at most a few thousand unreachable objects."""
    import keras

    global CONFIGURED_RUNS
    name = backend()
    if name == "tensorflow":
        release_traced_graphs()
    if CONFIGURED_RUNS:  # earlier runs' graphs and models are reference cycles now
        gc.collect()
    CONFIGURED_RUNS += 1
    if deterministic:
        DETERMINISM[name]()
    set_random_seed(seed)
    if threads and name in THREADS:
        THREADS[name](threads)
    keras.mixed_precision.set_dtype_policy(precision)


def set_random_seed(seed: int) -> None:
    """keras.utils.set_random_seed (Python, NumPy, TensorFlow, Keras' seed generators), with
    TensorFlow's kernels kept."""
    import keras

    with kernels_kept():
        keras.utils.set_random_seed(seed)


def clear_session() -> None:
    """keras.backend.clear_session without garbage collection (the caller's), with TensorFlow's
    kernels kept."""
    import keras

    with kernels_kept():
        keras.backend.clear_session(free_memory=False)


@contextlib.contextmanager
def kernels_kept() -> Iterator[None]:
    """Within: TensorFlow's kernel cache is not flushed, as tf.random.set_seed and
    keras.backend.clear_session would flush it: the flush makes a compiled model reused by the
    next run instantiate its traced steps again (0.2-0.3 s a run on 2 cores). It only restarts
    stateful random kernels, and Keras 3's random ops are stateless."""
    if backend() != "tensorflow":
        yield
        return
    with compat.tensorflow_context_detached():
        yield


def release_traced_graphs() -> None:
    """Drop the gradient closures TensorFlow registered while tracing earlier runs' `fit`.

    Keras' optimizer sums gradients through a tf.custom_gradient; in graph mode each trace adds a
    "CustomGradient-<uid>" entry to TensorFlow's global gradient registry and never removes it.
    The entry pins the traced train step with the model's and optimizer's variables, about 200 MiB
    per VGG16/MobileNetV2 run that clear_session() cannot free (TF issues #97697, #80895). Call
    only between runs, when nothing is being traced.
    """
    registry = compat.tensorflow_gradient_registry() or {}
    for name in [name for name in registry if name.startswith("CustomGradient-")]:
        del registry[name]


def _tensorflow_determinism() -> None:
    """Deterministic TensorFlow kernels (CPU and GPU), tf.data included."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def _jax_determinism() -> None:
    """Deterministic XLA GPU kernels; read when JAX starts its backend, so set before the first
    computation of the process (XLA on CPU is deterministic already)."""
    flag = "--xla_gpu_deterministic_ops=true"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def _torch_determinism() -> None:
    """Deterministic PyTorch algorithms (an op without one raises); cuBLAS needs its workspace
    fixed before CUDA starts."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def _tensorflow_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op pools; fixed once TensorFlow has started, so later calls
    with another count are ignored."""
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # pools are fixed once TensorFlow has started
        pass


def _torch_threads(threads: int) -> None:
    """PyTorch's intra-op pool."""
    import torch

    torch.set_num_threads(threads)


DETERMINISM = {"tensorflow": _tensorflow_determinism, "jax": _jax_determinism,
               "torch": _torch_determinism}
THREADS = {"tensorflow": _tensorflow_threads, "torch": _torch_threads}


def cap_threads_before_start(threads: int | None) -> None:
    """On JAX, size XLA's CPU pool: its CPU client reads PJRT_NPROC once, when it is created (at
    the first device query or computation), so this runs before Keras is imported."""
    if threads and backend() == "jax":
        os.environ["PJRT_NPROC"] = str(threads)
