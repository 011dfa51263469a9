"""The one home of the private APIs of Keras, TensorFlow and Hydra that tlbench uses.

Each use either has a public fallback that warns (the run goes on, slower or with more memory),
or a test in tests/test_compat.py that fails, naming the release it was written against, when an
upgrade removes it. Nothing else in tlbench touches a private name (tests/test_architecture.py).
Dependencies are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

TESTED = {"keras": "3.15", "tensorflow": "2.21", "hydra-core": "1.3.8"}
"""The releases each private use below was written against (tests/test_compat.py names them)."""

HYDRA_IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
"""The `_target_` of Hydra's default (in-process) launcher."""


def warn_fallback(what: str, package: str, effect: str) -> None:
    """One warning that a private API is gone and its public fallback runs instead."""
    warnings.warn(
        f"tlbench: {what} is not in this {package} (written against {TESTED[package]}); {effect}",
        RuntimeWarning,
        stacklevel=3,
    )


def run_through_graph(model, inputs, operation_fn: Callable) -> Any:
    """Run a Functional or Sequential model's graph on `inputs`, each operation called through
    `operation_fn(op)`. Private in Keras 3 (`Functional._run_through_graph`, a Sequential's
    `_functional`), no public equivalent: tests/test_compat.py names the version."""
    graph = getattr(model, "_functional", None) or model
    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def walk_layers(model) -> Iterator:
    """Every layer inside `model`, nested models and layers that hold layers included (not the
    model itself). Keras' `_flatten_layers`; without it, the public `layers` of nested models
    (layers held by plain custom layers are then missed), with a warning."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        yield from flatten(include_self=False, recursive=True)
        return
    warn_fallback(
        "Layer._flatten_layers", "keras", "walking the public `layers` of nested models instead"
    )
    yield from public_walk(model)


def public_walk(model) -> Iterator:
    """The layers reachable through the public `layers` attribute, depth first."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from public_walk(layer)


@contextlib.contextmanager
def tensorflow_context_detached() -> Iterator[None]:
    """Within: TensorFlow's eager context has no handle, so tf.random.set_seed and clear_session
    do not flush its kernel cache. Private (`context._context_handle`); where it is gone, a
    warning and the cache is flushed as usual (slower, not wrong)."""
    try:
        from tensorflow.python.eager import context

        eager = context.context()
        handle, eager._context_handle = eager._context_handle, None
    except (ImportError, AttributeError):
        warn_fallback(
            "tensorflow.python.eager.context._context_handle",
            "tensorflow",
            "the kernel cache is flushed between runs (0.2-0.3 s a run)",
        )
        yield
        return
    try:
        yield
    finally:
        eager._context_handle = handle


def tensorflow_gradient_registry() -> dict | None:
    """TensorFlow's global gradient registry (name -> function), which has no public API; None,
    with a warning, where it is gone (its traced closures then stay: memory grows per run)."""
    try:
        from tensorflow.python.framework import ops

        return ops._gradient_registry._registry
    except (ImportError, AttributeError):
        warn_fallback(
            "tensorflow.python.framework.ops._gradient_registry",
            "tensorflow",
            "traced train steps are not released between runs (memory grows)",
        )
        return None


def hydra_basic_sweeper() -> type:
    """Hydra's basic sweeper class, which tlbench's sweeper extends (private in Hydra 1.3; no
    public fallback: tests/test_compat.py names the version). Looked up on each call: Hydra's
    plugin scan re-imports its module, and the sweeper must extend the class of the scan's."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def hydra_config_loader() -> type:
    """Hydra's config loader class (private in Hydra 1.3; benchmarks/overhead.py times its
    compositions)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return ConfigLoaderImpl


def hydra_apply_overrides(overrides: list, config) -> None:
    """Set override values on a composed config as Hydra's composition sets them last."""
    hydra_config_loader()._apply_overrides_to_config(overrides, config)


def hydra_overrides_dirname(**kwargs: Any) -> str:
    """Hydra's `override_dirname` of a job's overrides."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    return get_overrides_dirname(**kwargs)
