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
    """The output of `python -m tlbench.weights ARGS` under this KERAS_HOME."""
    full_env = {k: v for k, v in os.environ.items() if k != "KERAS_HOME"}
    result = subprocess.run([sys.executable, "-m", "tlbench.weights", *args], text=True,
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
    result = subprocess.run([sys.executable, "-m", "tlbench.weights", "--help"], text=True,
                            capture_output=True, check=True)
    assert "--input-size" in result.stdout


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_backbone_has_a_cache_file_name(name):
    assert BACKBONES[name].imagenet_file(32).endswith(".h5")
