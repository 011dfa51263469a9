"""Time and peak memory of loading a data=tfds source, against the eager loader of a commit.

    python benchmarks/tfds_load.py [N_IMAGES] [--against COMMIT]

Prepares a TFDS dataset of N (default 4,000) photo-like JPEGs of 320-640 px (10 classes) in a
temporary data dir, then loads it at 224 px in a fresh process: with this code, and with the
tlbench package of COMMIT (its `git archive`, imported instead of the installed one) when
--against is given. Prints each load's seconds (TensorFlow imported before) and the growth of
peak RSS it caused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from package_at import package_at

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LOAD = """
import resource, sys, time
if {package!r}:  # another tlbench: not the installed one
    sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path.insert(0, {package!r})
sys.path.insert(0, {bench!r})
import tensorflow, tensorflow_datasets
from tfds_load import builder_class
builder_class()
from tlbench.config import group_config
from tlbench.data.tfds import TfdsConfig, load_tfds_images
cfg = group_config("data", "tfds", TfdsConfig, dataset="tlbench_photos", data_dir={data!r},
                   test_split=None, input_size=224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
source = load_tfds_images(cfg)
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
print(f"{{len(source.labels)}} images ({{type(source.images).__name__}}): load {{seconds:.2f}} s, "
      f"peak RSS +{{grown:.0f}} MiB")
"""


def builder_class():
    """The benchmark's TFDS builder (registered when called)."""
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    class TlbenchPhotos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(int(os.environ["N_IMAGES"]))}

        def _generate_examples(self, n):
            rng = np.random.default_rng(0)
            for i in range(n):
                w, h = rng.integers(320, 641, 2)
                small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                image = Image.fromarray(small).resize((int(w), int(h)),
                                                      Image.Resampling.BICUBIC)
                yield i, {"image": np.asarray(image), "label": i % 10}

    return TlbenchPhotos


def load(package: str, data: str, label: str) -> None:
    """One load in a fresh process, importing tlbench from `package` (else the installed one)."""
    code = LOAD.format(package=str(package), bench=str(Path(__file__).parent), data=data)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(f"{label}: {done.stdout.strip() or done.stderr.strip().splitlines()[-1]}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 4000
    os.environ["N_IMAGES"] = str(n)
    against = sys.argv[sys.argv.index("--against") + 1] if "--against" in sys.argv else None
    with tempfile.TemporaryDirectory() as tmp:
        builder_class()(data_dir=tmp).download_and_prepare()
        load("", tmp, "this code")
        if against:
            load(str(package_at(against, Path(tmp) / "against")), tmp, f"tlbench of {against}")


if __name__ == "__main__":
    main()
