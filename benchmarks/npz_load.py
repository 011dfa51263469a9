"""Time and peak memory of loading and serving a compressed data=npz, against another commit.

    python benchmarks/npz_load.py [N_IMAGES] [--against COMMIT]

Writes an `np.savez_compressed` .npz of N (default 20,000) 64 px RGB uint8 images (10 classes)
in a temporary folder, then, each in a fresh process with its own empty cache, loads it at
64 px and serves every image once, as the decoded-image cache's fill does: with this code twice
(the first load extracts the arrays into the cache, the second reads that extraction), and
with the tlbench package of COMMIT (its `git archive`, imported instead of the installed one)
when --against is given. Prints each load's and serve's seconds and the growth of peak RSS
they caused (Keras imported before).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from package_at import package_at

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LOAD = """
import resource, sys, time
import keras, numpy as np  # serving resizes on the Keras backend: imported before measuring
if {package!r}:  # another tlbench: not the installed one
    sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path.insert(0, {package!r})
from tlbench.config import group_config
from tlbench.data.npz import NpzConfig, load_npz_images
cfg = group_config("data", "npz", NpzConfig, path={path!r}, input_size=64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
source = load_npz_images(cfg)
loaded = time.perf_counter() - start
for _ in source.images.decode(np.arange(len(source.labels)), 64):
    pass
served = time.perf_counter() - start - loaded
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
print(f"{{len(source.labels)}} images: load {{loaded:.2f}} s, serve {{served:.2f}} s, "
      f"peak RSS +{{grown:.0f}} MiB")
"""


def write_npz(path: Path, n: int) -> None:
    """N photo-like 64 px RGB images (8x8 random colours, upscaled, so they compress)."""
    small = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), np.uint8)
    x = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)
    cut = n - n // 6
    labels = np.arange(n) % 10
    np.savez_compressed(path, x_train=x[:cut], y_train=labels[:cut], x_test=x[cut:],
                        y_test=labels[cut:])
    print(f"{path.name}: {n} images, {x.nbytes / 2**20:.0f} MiB as arrays, "
          f"{path.stat().st_size / 2**20:.0f} MiB compressed")


def load(package: str, path: Path, cache: Path, label: str) -> None:
    """One load and serve in a fresh process, caching under `cache`, importing tlbench from
    `package` (else the installed one)."""
    code = LOAD.format(package=str(package), path=str(path))
    env = os.environ | {"TLBENCH_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    print(f"{label}: {done.stdout.strip() or done.stderr.strip().splitlines()[-1]}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000
    against = sys.argv[sys.argv.index("--against") + 1] if "--against" in sys.argv else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npz"
        write_npz(path, n)
        load("", path, Path(tmp) / "cache", "this code, first load (extracts)")
        load("", path, Path(tmp) / "cache", "this code, second load (cached)")
        if against:
            old = package_at(against, Path(tmp) / "against")
            load(str(old), path, Path(tmp) / "old-cache", f"tlbench of {against}")


if __name__ == "__main__":
    main()
