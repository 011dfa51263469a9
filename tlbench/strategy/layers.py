"""Keras layers the strategies add to a backbone (imported when a model is built)."""

from __future__ import annotations

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
