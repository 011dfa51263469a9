"""A base's recorded facts are found again by any later process: their key depends on nothing
but what decides the base."""

from __future__ import annotations

import json
import subprocess
import sys

from tlbench.backbone import BACKBONES
from tlbench.frozen.base_facts import record_key

KEY = "json.dumps(record_key(BACKBONES['mobilenetv2'], 32, 'random init, seed 0', 'float32'))"


def test_a_record_key_is_the_same_in_another_process():
    other = subprocess.run(
        [sys.executable, "-c", "import json; from tlbench.backbone import BACKBONES; from "
         f"tlbench.frozen.base_facts import record_key; print({KEY})"],
        capture_output=True, text=True, check=True, timeout=300).stdout
    here = record_key(BACKBONES["mobilenetv2"], 32, "random init, seed 0", "float32")
    assert json.loads(other) == here
    assert here != record_key(BACKBONES["mobilenetv2"], 32, "random init, seed 1", "float32")
    assert here != record_key(BACKBONES["vgg16"], 32, "random init, seed 0", "float32")
