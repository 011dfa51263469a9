"""The backbone's preprocessing as the model's first layer (imported when a model is built).

Images travel as uint8 from the decoded-image cache to the model; the cast to float32 and the
backbone's preprocess_input run per batch inside the model, so on an accelerator they run there
(and a batch crosses to it at a quarter of float32's bytes).
"""

from __future__ import annotations

from collections.abc import Callable

import keras


class Preprocess(keras.layers.Layer):
    """uint8 RGB pixels to the range the backbone was trained on: cast to float32, then its
    preprocess function (keras.applications' preprocess_input, or your file's mapping)."""

    def __init__(self, preprocess: Callable, **kwargs) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.preprocess = preprocess

    def call(self, pixels):
        return self.preprocess(keras.ops.cast(pixels, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape


def on_pixels(model, preprocess: Callable, name: str | None = None):
    """`model` (which takes preprocessed images) fed uint8 pixels through the preprocessing."""
    pixels = keras.Input(shape=model.input_shape[1:], dtype="uint8", name="pixels")
    return keras.Model(pixels, model(Preprocess(preprocess, name="preprocess")(pixels)),
                       name=name or model.name)
