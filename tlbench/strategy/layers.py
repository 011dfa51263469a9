"""Keras layers the strategies add to a backbone (imported when a model is built)."""

from __future__ import annotations

import random

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="tlbench")
class Standardize(keras.layers.Layer):
    """(x - mean) / std per feature, with statistics set once from the training split by
    `adapt` and never trained. Unlike keras.layers.Normalization, no floor on the standard
    deviation (features of random-init bases can be 1e-12 in scale); a constant feature is only
    centred."""

    def build(self, input_shape) -> None:
        width = (input_shape[-1],)
        self.mean = self.add_weight(shape=width, initializer="zeros", trainable=False,
                                    name="mean")
        self.inverse_std = self.add_weight(shape=width, initializer="ones", trainable=False,
                                           name="inverse_std")

    def call(self, inputs):
        return (inputs - self.mean) * self.inverse_std

    def adapt(self, values: np.ndarray) -> None:
        """Set the statistics from (n, features) training values."""
        values = np.asarray(values, dtype=np.float64)
        std = values.std(axis=0)
        self.mean.assign(values.mean(axis=0).astype(np.float32))
        self.inverse_std.assign(np.where(std > 0, 1 / np.where(std > 0, std, 1), 1.0)
                                .astype(np.float32))


def dropout(rate: float, name: str):
    """Dropout whose masks follow the run's seed on every backend. Its seed is the draw Keras
    makes for an unseeded layer (from Python's `random`, which `runtime.set_random_seed` set
    from the run's seed), so TensorFlow and JAX train as before; made explicit because Keras on
    PyTorch draws an unseeded Dropout's masks from torch's global generator instead."""
    return keras.layers.Dropout(rate, seed=random.randint(1, int(1e9)), name=name)
