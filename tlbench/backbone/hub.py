"""A KerasHub image backbone as a backbone: `backbone=kerashub backbone.preset=<preset folder>`.

The folder is a local preset (`save_to_preset`; nothing is downloaded): the backbone is built
with keras_hub.models.Backbone.from_preset and fed through the preset's image converter's scale
and offset (images as [0, 255] where the preset has no converter). Its entry is measured on the
network (tlbench/backbone/derived.py). backbone.weights: `preset` (the preset's
model.weights.h5), null (random initialisation), a weights file or source:<name>. Needs
keras-hub: pip install -e '.[hub]'.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from tlbench import registry
from tlbench.backbone.derived import fixed_side, measured_spec, preprocessing
from tlbench.backbone.spec import BackboneSpec
from tlbench.config import BackboneConfig
from tlbench.errors import TlbenchError, check
from tlbench.paths import sha256_of

PRESET_WEIGHTS = "preset"
WEIGHTS_FILE = "model.weights.h5"
CONVERTER_FILE = "image_converter.json"


@registry.FILE_BACKBONES.entry("kerashub")
@dataclass(kw_only=True)
class KerasHubConfig(BackboneConfig):
    """A local KerasHub preset folder holding an image backbone."""

    preset: str | None

    def __post_init__(self) -> None:
        check(self.preset is not None, "backbone.preset", self.preset,
              "the path of a local KerasHub preset folder (backbone.save_to_preset(folder))")
        check(self.weights != "imagenet", "backbone.weights", self.weights,
              f"{PRESET_WEIGHTS} (the preset's weights), null (random initialisation), a weights "
              "file or source:<name>")
        if self.weights == PRESET_WEIGHTS:
            self.weights = str(Path(self.preset).expanduser() / WEIGHTS_FILE)
        super().__post_init__()
        side = fixed_side(built(*self.source(), weights=False), f"backbone.preset={self.preset}")
        check(side is None or self.input_size == side, "backbone.input_size", self.input_size,
              f"{side}: the preset's fixed input side")

    def source(self) -> tuple[str, str]:
        """The preset folder's resolved path and a digest of its files; one line when it is
        missing or holds no preset."""
        folder = Path(self.preset).expanduser().resolve()
        if not folder.is_dir():
            raise TlbenchError(f"backbone.preset={self.preset}: no such folder; pass a local "
                               "KerasHub preset folder (backbone.save_to_preset(folder)).")
        if not (folder / "config.json").is_file():
            raise TlbenchError(f"backbone.preset={self.preset}: not a KerasHub preset (no "
                               "config.json); save one with backbone.save_to_preset(folder).")
        digest = hashlib.sha256()
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(f"{file.name}:{sha256_of(file)}\n".encode())
        return str(folder), digest.hexdigest()

    def entry(self) -> BackboneSpec:
        """The entry measured on the preset's backbone (once per folder content)."""
        return preset_entry(*self.source())

    def content_digest(self) -> str:
        """The digest of the preset folder's files."""
        return self.source()[1]


def keras_hub():
    """The keras_hub module (Keras imported first, quietly); one line when it is not
    installed."""
    from tlbench.quiet import import_keras

    import_keras()
    try:
        import keras_hub
    except ImportError:
        raise TlbenchError("backbone=kerashub needs keras-hub: pip install -e '.[hub]'.") \
            from None
    return keras_hub


@functools.lru_cache(maxsize=4)
def preset_entry(folder: str, digest: str) -> BackboneSpec:
    """The entry for the preset in `folder` (whose files have `digest`)."""
    model = built(folder, digest, weights=False)
    key = f"backbone.preset={folder}"
    fixed_side(model, key)
    if len(model.outputs) != 1 or len(model.output.shape) != 4:
        raise TlbenchError(f"{key}: the backbone outputs {[t.shape for t in model.outputs]}, not "
                           "one feature map (batch, height, width, channels); tlbench takes "
                           "convolutional image backbones.")
    return measured_spec(
        model, name=f"kerashub-{Path(folder).name}-{digest[:12]}", family="kerashub",
        preprocess=converter_preprocessing(folder), side=fixed_side(model, key),
        build=functools.partial(random_init, folder, digest), load_weights=None)


def built(folder: str, digest: str, weights: bool, image_shape=None):
    """Backbone.from_preset(folder) (on an input of image_shape where given); one line when the
    preset is not a KerasHub backbone."""
    shape = {} if image_shape is None else {"image_shape": tuple(image_shape)}
    try:
        return keras_hub().models.Backbone.from_preset(folder, load_weights=weights, **shape)
    except TlbenchError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TlbenchError(f"backbone.preset={folder}: not a KerasHub backbone preset "
                           f"({first}).") from None


def random_init(folder: str, digest: str, input_shape: tuple[int, int, int],
                weights: None = None):
    """The preset's backbone on an input of `input_shape`, randomly initialised (the weights
    come from backbone.weights)."""
    return built(folder, digest, weights=False, image_shape=input_shape)


def converter_preprocessing(folder: str):
    """The preset image converter's x * scale + offset, or [0, 255] as is without one."""
    if not (Path(folder) / CONVERTER_FILE).is_file():
        return preprocessing("none")
    converter = keras_hub().layers.ImageConverter.from_preset(folder)
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return preprocessing("scale", scale, offset)
