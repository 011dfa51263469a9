"""ImageNet weights through Keras' own cache, offline: real loading, fast errors, the listing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tlbench.backbone import BACKBONES, NETWORKS

MOBILENET_FILE = BACKBONES["mobilenetv2"].imagenet_file(224)


def python(script: str, keras_home, **env: str) -> subprocess.CompletedProcess:
    """Run a script in a fresh interpreter whose Keras cache is keras_home (set before import)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("KERAS_HOME", "TLBENCH_CACHE")}
    full_env |= {"KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3"} | env
    return subprocess.run([sys.executable, *(["-c", textwrap.dedent(script)] if script else [])],
                          env=full_env, text=True, capture_output=True, timeout=300)


def weights_listing(keras_home, *args: str) -> str:
    """The output of `python -m tlbench weights ARGS` under this KERAS_HOME."""
    full_env = {k: v for k, v in os.environ.items() if k != "KERAS_HOME"}
    result = subprocess.run([sys.executable, "-m", "tlbench", "weights", *args], text=True,
                            capture_output=True, env=full_env | {"KERAS_HOME": str(keras_home)},
                            check=True, timeout=60)
    return result.stdout


def test_imagenet_loads_the_cached_file_keras_expects(tmp_path):
    """A random headless MobileNetV2 saved under Keras' cache name is what imagenet loads."""
    models = tmp_path / "models"
    models.mkdir()
    result = python(f"""
        import warnings
        import keras, numpy as np
        from tlbench.backbone import BACKBONES, build_base, weights_sha256, sha256_of
        spec = BACKBONES["mobilenetv2"]
        keras.utils.set_random_seed(1)
        saved = keras.applications.MobileNetV2(include_top=False, weights=None,
                                               input_shape=(224, 224, 3))
        saved.save(r"{models / MOBILENET_FILE}")
        keras.utils.set_random_seed(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = build_base(spec, 32, "imagenet", 0.9)
        for expected, actual in zip(saved.get_weights(), loaded.get_weights(), strict=True):
            np.testing.assert_array_equal(expected, actual)
        assert weights_sha256(spec, 32, "imagenet") == sha256_of(r"{models / MOBILENET_FILE}")
        print("loaded", len(saved.get_weights()))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded" in result.stdout
    listing = weights_listing(tmp_path)
    line = next(row for row in listing.splitlines() if "mobilenetv2" in row)
    assert "present" in line and str(models / MOBILENET_FILE) in line
    assert sum("missing" in row for row in listing.splitlines()) == len(NETWORKS) - 1


OFFLINE_BUILD = """
    import time
    from tlbench import backbone, paths
    from tlbench.errors import TlbenchError
    paths.DOWNLOAD_TIMEOUT_SECONDS = 2
    backbone.build_base(backbone.BACKBONES["vgg16"], 32, None, None)  # TensorFlow warm-up
    start = time.perf_counter()
    try:
        backbone.build_base(backbone.BACKBONES["vgg16"], 32, "imagenet", None)
    except TlbenchError as exc:
        print(f"{time.perf_counter() - start:.1f}")
        print(exc)
"""


def test_offline_imagenet_is_one_fast_line_naming_the_file(tmp_path):
    # A proxy on a closed port makes the download fail at once, with or without a real network.
    result = python(OFFLINE_BUILD, tmp_path / "empty", https_proxy="http://127.0.0.1:9")
    *_, seconds, message = result.stdout.strip().splitlines()  # after Keras' "Downloading ..."
    assert float(seconds) < 10, result.stdout
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 is not in the Keras cache" in message
    assert str(tmp_path / "empty" / "models") in message
    assert "backbone.weights=null" in message and "source:digits04" in message


def test_stalled_download_times_out(tmp_path):
    """A server that accepts but never answers must not hang the run."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        result = python(OFFLINE_BUILD, tmp_path / "empty", https_proxy=proxy)
    assert "is not in the Keras cache" in result.stdout, result.stderr[-1500:]
    assert time.monotonic() - start < 60


def test_listing_help_and_defaults(tmp_path):
    listing = weights_listing(tmp_path, "--input-size", "96", "--cache-dir", str(tmp_path / "c"))
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in listing
    assert "efficientnetb0_notop.h5" in listing and "(none yet)" in listing
    result = subprocess.run([sys.executable, "-m", "tlbench", "weights", "--help"], text=True,
                            capture_output=True, check=True)
    assert "--input-size" in result.stdout


# The headless ImageNet file Keras 3 looks for in $KERAS_HOME/models, per network at 224 px (and
# any size without a file of its own), as keras/src/applications/*.py names it: written out in
# full, as each constructor asked for it with its download intercepted (ASKED_FOR below).
IMAGENET_FILES = {
    "convnextbase": "convnext_base_notop.h5",
    "convnextlarge": "convnext_large_notop.h5",
    "convnextsmall": "convnext_small_notop.h5",
    "convnexttiny": "convnext_tiny_notop.h5",
    "convnextxlarge": "convnext_xlarge_notop.h5",
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet169": "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet201": "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
    "efficientnetb1": "efficientnetb1_notop.h5",
    "efficientnetb2": "efficientnetb2_notop.h5",
    "efficientnetb3": "efficientnetb3_notop.h5",
    "efficientnetb4": "efficientnetb4_notop.h5",
    "efficientnetb5": "efficientnetb5_notop.h5",
    "efficientnetb6": "efficientnetb6_notop.h5",
    "efficientnetb7": "efficientnetb7_notop.h5",
    "efficientnetv2b0": "efficientnetv2-b0_notop.h5",
    "efficientnetv2b1": "efficientnetv2-b1_notop.h5",
    "efficientnetv2b2": "efficientnetv2-b2_notop.h5",
    "efficientnetv2b3": "efficientnetv2-b3_notop.h5",
    "efficientnetv2l": "efficientnetv2-l_notop.h5",
    "efficientnetv2m": "efficientnetv2-m_notop.h5",
    "efficientnetv2s": "efficientnetv2-s_notop.h5",
    "inceptionresnetv2": "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inceptionv3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet": "mobilenet_1_0_224_tf_no_top.h5",
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "mobilenetv3large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "mobilenetv3small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    "nasnetlarge": "nasnet_large_no_top.h5",
    "nasnetmobile": "nasnet_mobile_no_top.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101v2": "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet152": "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet152v2": "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50v2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def test_every_backbone_names_the_file_keras_looks_for():
    assert sorted(IMAGENET_FILES) == sorted(NETWORKS)
    for name, file in IMAGENET_FILES.items():
        assert BACKBONES[name].imagenet_file(BACKBONES[name].min_input_size) == file, name
        assert BACKBONES[name].imagenet_file(224) == file, name
    # MobileNet and MobileNetV2 have a file per input size; other sizes load the 224 one.
    assert BACKBONES["mobilenet"].imagenet_file(128) == "mobilenet_1_0_128_tf_no_top.h5"
    assert BACKBONES["mobilenetv2"].imagenet_file(96) == \
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"


ASKED_FOR = """
import sys
from keras.src.utils import file_utils
from tlbench.backbone import BACKBONES

class Asked(Exception):
    pass

def ask(fname, *args, **kwargs):
    raise Asked(fname)

file_utils.get_file = ask  # what Keras' constructor asks its cache for, before any download
for name, size in zip(sys.argv[1::2], map(int, sys.argv[2::2])):
    try:
        BACKBONES[name].build((size, size, 3), weights="imagenet")
    except Asked as asked:
        print(name, size, asked.args[0])
"""
# The smallest network of each keras/src/applications module, and MobileNet's own sizes.
ONE_PER_MODULE = [("vgg16", 32), ("resnet50", 32), ("resnet50v2", 32), ("densenet121", 32),
                  ("mobilenet", 128), ("mobilenetv2", 96), ("mobilenetv3small", 32),
                  ("efficientnetb0", 32), ("efficientnetv2b0", 32), ("convnexttiny", 32),
                  ("inceptionv3", 75), ("inceptionresnetv2", 75), ("xception", 71),
                  ("nasnetmobile", 32)]


@pytest.mark.slow
def test_the_file_names_are_the_ones_keras_asks_for(tmp_path):
    """Each Keras module's constructor, run with weights="imagenet", asks for the file tlbench
    names (its request is intercepted: nothing is downloaded)."""
    args = [str(value) for pair in ONE_PER_MODULE for value in pair]
    result = subprocess.run([sys.executable, "-c", ASKED_FOR, *args], text=True,
                            capture_output=True, timeout=600,
                            env=os.environ | {"KERAS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    asked = {name: file for name, _, file in map(str.split, result.stdout.splitlines())}
    assert asked == {name: BACKBONES[name].imagenet_file(size) for name, size in ONE_PER_MODULE}
