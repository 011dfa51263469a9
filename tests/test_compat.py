"""Each private API tlbench uses is still there (a failure names the release it was written
against), and each public fallback runs, with its warning, where one is gone."""

from __future__ import annotations

import contextlib
import importlib.metadata

import keras
import pytest

from tlbench import compat
from tlbench.backbone import graph, stages


@contextlib.contextmanager
def written_against(package: str, what: str):
    """Turn a missing private name into a failure naming the release it was written against."""
    try:
        yield
    except (ImportError, AttributeError) as exc:
        installed = importlib.metadata.version(package)
        pytest.fail(
            f"{what} is gone from {package} {installed} (written against "
            f"{compat.TESTED[package]}): {exc}; update tlbench/compat.py"
        )


def tiny_model(nested: bool = False) -> keras.Model:
    """Conv -> pool, optionally wrapped in a Sequential inside a functional model."""
    inner = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, strides=2, name="stem_conv1"),
            keras.layers.BatchNormalization(name="stem_bn"),
        ],
        name="inner",
    )
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.GlobalAveragePooling2D()(inner(inputs) if nested else inputs)
    return keras.Model(inputs, outputs)


def test_graph_trace_visits_every_operation_nested_models_included():
    seen = []
    with written_against("keras", "Functional._run_through_graph / Sequential._functional"):
        graph.trace(tiny_model(nested=True), 32, lambda op, i, o: seen.append(op.name))
    assert seen == ["stem_conv1", "stem_bn", "inner", "global_average_pooling2d"]


def test_walk_layers_reaches_layers_of_nested_models():
    with written_against("keras", "Layer._flatten_layers"):
        names = [layer.name for layer in compat.walk_layers(tiny_model(nested=True))]
    assert {"stem_conv1", "stem_bn", "inner"} <= set(names)


class PublicOnly:
    """A model as a Keras without `_flatten_layers` would show it: public `layers` only."""

    def __init__(self, model: keras.Model) -> None:
        self.layers = model.layers


def test_walk_layers_falls_back_to_public_layers_with_a_warning():
    with pytest.warns(RuntimeWarning, match="Layer._flatten_layers is not in this keras"):
        names = [layer.name for layer in compat.walk_layers(PublicOnly(tiny_model(True)))]
    assert {"stem_conv1", "stem_bn", "inner"} <= set(names)


def test_keras_auto_names_are_recognised_without_keras_internals():
    layer = keras.layers.ReLU()
    assert stages.snake_case("ReLU") == "re_lu" and layer.name.startswith("re_lu")
    assert stages._is_auto_named(layer)
    assert not stages._is_auto_named(keras.layers.ReLU(name="block1_relu"))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only")
def test_tensorflow_context_handle_is_detached_within():
    from tensorflow.python.eager import context

    with written_against("tensorflow", "tensorflow.python.eager.context._context_handle"):
        before = context.context()._context_handle
        with compat.tensorflow_context_detached():
            assert context.context()._context_handle is None
    assert context.context()._context_handle is before


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only")
def test_tensorflow_gradient_registry_is_reachable():
    with written_against("tensorflow", "tensorflow.python.framework.ops._gradient_registry"):
        registry = compat.tensorflow_gradient_registry()
    assert isinstance(registry, dict) and registry


class NoHandle:
    """An eager context as a TensorFlow without `_context_handle` would show it."""

    __slots__ = ()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only")
def test_tensorflow_fallbacks_warn_and_go_on(monkeypatch):
    from tensorflow.python.eager import context
    from tensorflow.python.framework import ops

    monkeypatch.setattr(context, "context", NoHandle)
    with (
        pytest.warns(RuntimeWarning, match="kernel cache is flushed"),
        compat.tensorflow_context_detached(),
    ):
        pass
    monkeypatch.delattr(ops, "_gradient_registry")
    with pytest.warns(RuntimeWarning, match="not released between runs"):
        assert compat.tensorflow_gradient_registry() is None


def test_hydra_internals_the_sweeper_extends_are_there():
    with written_against("hydra-core", "hydra._internal (BasicSweeper, ConfigLoaderImpl)"):
        sweeper = compat.hydra_basic_sweeper()
        assert callable(compat.hydra_config_loader()._apply_overrides_to_config)
        assert (
            compat.hydra_overrides_dirname(overrides=[], kv_sep="=", item_sep=",", exclude_keys=[])
            == ""
        )
    assert sweeper.__name__ == "BasicSweeper"
    launcher, name = compat.HYDRA_IN_PROCESS_LAUNCHER.rsplit(".", 1)
    with written_against("hydra-core", compat.HYDRA_IN_PROCESS_LAUNCHER):
        assert getattr(importlib.import_module(launcher), name).__name__ == name
