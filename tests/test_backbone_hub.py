"""backbone=kerashub: a local KerasHub preset as a backbone (tlbench/backbone/hub.py): the
preset's converter and weights, bad presets, the real CLI. Needs keras-hub (the test extra)."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from tlbench.backbone import build_base
from tlbench.config import parse_config
from tlbench.errors import TlbenchError

from .conftest import TINY, compose_config
from .test_cli import runs_of, tlbench

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is not installed: pip install "
                                                    "-e '.[test]' (or '.[hub]')")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny randomly initialised KerasHub ResNet preset with its image converter, and two
    folders that are not backbone presets."""
    folder = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(0)
    preset = folder / "preset"
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block").save_to_preset(str(preset))
    keras_hub.layers.ResNetImageConverter(scale=1 / 127.5, offset=-1.0).save_to_preset(str(preset))
    (folder / "not_a_preset").mkdir()
    (folder / "junk_preset").mkdir()
    (folder / "junk_preset" / "config.json").write_text(json.dumps({"class_name": "Nothing"}))
    return folder


def hub_config(files, *overrides: str, preset: str = "preset"):
    """A validated kerashub RunConfig."""
    return parse_config(compose_config([*TINY, "backbone=kerashub",
                                        f"backbone.preset={files / preset}", *overrides]))


def test_kerashub_entry_uses_the_preset_converter_and_weights(files):
    config = hub_config(files, "backbone.weights=preset")
    entry = config.backbone.entry()
    assert entry.preprocessed_range == pytest.approx((-1.0, 1.0))  # scale 1/127.5, offset -1
    assert entry.stages == (2, 4, 8, 16, 32) and entry.cut_at_one_tensor
    base = build_base(entry, 32, config.backbone.weights, None)
    preset = keras_hub.models.Backbone.from_preset(str(files / "preset"))
    assert np.array_equal(base.get_weights()[0], preset.get_weights()[0])
    assert base.input.shape == (None, 32, 32, 3)


@pytest.mark.parametrize(("preset", "message"), [
    ("missing", "missing: no such folder"),
    ("not_a_preset", "not_a_preset: not a KerasHub preset (no config.json)"),
    ("junk_preset", "junk_preset: not a KerasHub backbone preset"),
])
def test_bad_presets_are_one_line(files, preset, message):
    with pytest.raises(TlbenchError, match=re.escape(message)):
        hub_config(files, preset=preset)


def test_kerashub_runs_through_the_cli(files, tmp_path):
    """Feature extraction, partial fine-tuning and full retraining of the preset (its weights)
    through the real CLI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = tlbench("-m", "strategy=feature_extraction,partial_finetune,full_retrain",
                     "data=digits59",
                     "data.train_size=5", "trainer.epochs=1", "trainer.patience=null",
                     "backbone=kerashub", f"backbone.preset={files / 'preset'}",
                     "backbone.weights=preset", cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {r.info.run_name: r for r in runs_of(uri)}
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 3
    frozen, partial, full = (runs[f"kerashub-{s}-n5-s0"].data.metrics["params_trainable"]
                             for s in ("feature_extraction", "partial_finetune", "full_retrain"))
    assert frozen < partial < full
    assert runs["kerashub-partial_finetune-n5-s0"].data.tags["inputs"] == "cut"
