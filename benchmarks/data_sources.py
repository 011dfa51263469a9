"""Folder scan and decode speed, a run's source loading, synthetic generation speed and memory.

    python benchmarks/data_sources.py [N_FOLDER_IMAGES] [N_SYNTHETIC]

Writes N JPEG photos-like images (random 320-640 px sides, 10 classes) into a temporary folder,
then times the folder scan with data.check=header and data.check=decode, and decoding every image
at 32 and 224 px. Then what a run pays for its source, for that folder and for an .npz of
CIFAR-10's shape (60,000 32x32 RGB uint8 images, 176 MiB, written with an mtime in the past):
its content digest (the run's identity), `data.load_source` and the source's fingerprint (the
feature cache key), for the first run of a process (what every run paid before sources and file
digests were kept per process) and for the next one. Then generates N_SYNTHETIC 32 px synthetic
images in batches of 1,000 (as the feature cache reads them) and all at once, printing time and
peak memory.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tlbench.config import group_config  # noqa: E402
from tlbench.data.folder import FolderConfig, load_folder_images  # noqa: E402
from tlbench.data.npz import NpzConfig  # noqa: E402
from tlbench.data.synthetic import SyntheticConfig, load_synthetic_images  # noqa: E402


def folder_config(path: str, size: int, **overrides) -> FolderConfig:
    """The folder source's packaged defaults for `path` at `size` px."""
    return group_config("data", "folder", FolderConfig, path=path, input_size=size, **overrides)


def write_folder(root: Path, n: int) -> None:
    """n smooth random JPEGs, 320-640 px per side, in 10 class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = rng.integers(320, 641, 2)
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((int(w), int(h)), Image.Resampling.BICUBIC)
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:06d}.jpg", quality=90)


def timed(label: str, fn, n: int):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.2f} s ({n / seconds:,.0f} images/s)")
    return result


def read_all(source, batch: int) -> None:
    """Read every image in batches, keeping none (as the feature cache does)."""
    for start in range(0, len(source.images), batch):
        source.images[np.arange(start, min(start + batch, len(source.images)))]


def write_npz(path: Path) -> None:
    """An .npz of CIFAR-10's shape, last modified an hour ago (a file the user already had)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60_000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 60_000)
    np.savez(path, x_train=images[:50_000], y_train=labels[:50_000], x_test=images[50_000:],
             y_test=labels[50_000:])
    old = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(old, old))


def source_per_run(label: str, cfg) -> None:
    """A run's content digest, source load and fingerprint: a process's first run, then its
    second."""
    from tlbench import data

    data.LOADED.clear()

    def one_run() -> None:
        cfg.content_digest()
        data.load_source(cfg).fingerprint()

    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        one_run()
        seconds.append(time.perf_counter() - start)
    print(f"{label}: a process's first run {seconds[0]:.3f} s (every run before), the next "
          f"{seconds[1]:.4f} s")
    data.LOADED.clear()  # not held through the measurements that follow


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n_synthetic = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed(f"write {n} JPEGs", lambda: write_folder(root, n), n)
        for check in ("header", "decode"):
            timed(f"scan, data.check={check}",
                  lambda c=check: load_folder_images(folder_config(tmp, 32, check=c)), n)
        for size in (32, 224):
            source = load_folder_images(folder_config(tmp, size))
            timed(f"decode all at {size} px, batches of 256", lambda s=source: read_all(s, 256), n)
        source_per_run(f"source of a run, folder of {n} JPEGs", folder_config(tmp, 32))
        write_npz(root / "cifar_shaped.npz")
        source_per_run("source of a run, .npz of 60,000 32 px images",
                       group_config("data", "npz", NpzConfig, path=str(root / "cifar_shaped.npz"),
                                    input_size=32))
    per_class = n_synthetic // 10
    cfg = group_config("data", "synthetic", SyntheticConfig, n_classes=10,
                       images_per_class=per_class)
    source = load_synthetic_images(cfg)
    before = peak_mb()
    timed(f"synthetic {n_synthetic} x 32 px in batches of 1000",
          lambda: read_all(source, 1000), n_synthetic)
    print(f"  peak RSS {peak_mb():.0f} MiB (was {before:.0f} MiB before generating)")
    whole = timed(f"synthetic {n_synthetic} x 32 px at once", lambda: source.images[
        np.arange(n_synthetic)], n_synthetic)
    print(f"  peak RSS {peak_mb():.0f} MiB; the array itself is {whole.nbytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
