"""Memory and time at the data sizes users bring, and the decode rate against Keras' own loader.

    python benchmarks/data_scale.py [--images 2000,8000,32000] [--size 224]
                                    [--backbone mobilenetv3small] [--strategies S,S,...]
                                    [--against DIR] [--work DIR] [--no-rate]

1. Folders: N JPEG photos (256 x 256 crops of scikit-learn's two sample photos, 10 classes told
   apart by flips and channel order), written once into --work and reused.
2. Decode rate (unless --no-rate): in one process, on the smallest folder, a whole pass of
   keras.utils.image_dataset_from_directory (batches of 32 at --size, as a user iterates it)
   against tlbench's fill of the decoded-image cache from the same files (decoded, resized,
   rounded and written: the rows are usable when the fill returns, and reach the disk in the
   background), alternately, three times each; medians and their ratio. The rate until the rows
   are on disk (the background sync finished) is printed beside it. Both use every core of this
   machine; the files are in the page cache for both. Where /dev/shm exists, the same fill into
   it (memory, no disk) as well: what the fill costs without this machine's disk.
3. Runs: for each N, one whole process `python -m tlbench` per strategy (feature_extraction,
   partial_finetune with the cut cached, full_retrain), 1 epoch per phase, random weights,
   data.train_size=all at --size, each with its own sqlite store; the N's runs share one empty
   TLBENCH_CACHE, so the first run of each N decodes the folder (its wall time includes that
   fill), and the later ones read the cache. Per run: the whole process's wall time, its peak
   RSS (the run's logged process_peak_rss_mb, getrusage's maximum resident set), test accuracy.
   Then, per strategy, the growth of the peak RSS per extra image between the smallest and the
   largest N (the issue's bar: at most 0.05 MiB per image).
   `--against DIR` (a folder holding another tlbench package, e.g. an older commit's checkout)
   runs the same processes with DIR first on PYTHONPATH, for the N whose images fit in a
   third of this machine's memory at 0.95 MiB each (the old in-memory float32 splits): a
   before/after comparison in one invocation.

The machine may be shared: compare figures from the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 10
CROP = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="2000,8000,32000",
                        help="folder sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input side (default: 224)")
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--strategies", default="feature_extraction,partial_finetune,full_retrain")
    parser.add_argument("--against", help="folder with another tlbench package, compared")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "data_scale",
                        help="where folders, caches and stores go (default: %(default)s)")
    parser.add_argument("--no-rate", action="store_true", help="skip the decode-rate section")
    parser.add_argument("--rate-child", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def jpeg_folder(root: Path, n: int) -> Path:
    """root/class<k>/<i>.jpg, n files, written once (a marker file says it is complete)."""
    done = root / ".complete"
    if done.is_file():
        return root
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % CLASSES
        photo = photos[label % 2]
        y, x = rng.integers(0, photo.shape[0] - CROP), rng.integers(0, photo.shape[1] - CROP)
        crop = photo[y:y + CROP, x:x + CROP]
        crop = crop[:, ::-1] if label // 2 % 2 else crop
        crop = np.roll(crop, label // 4, axis=-1)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


def rate_child(folder: str, size: int) -> None:
    """In this process: Keras' loader and tlbench's cache fill over the same files, alternately;
    prints one JSON line of their medians (images/s)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from tlbench.config import group_config
    from tlbench.data import decoded_images, load_source
    from tlbench.data.folder import FolderConfig
    from tlbench.rowsync import wait_for_syncs

    source = load_source(group_config("data", "folder", FolderConfig, path=str(folder),
                                      input_size=size, train_size="all"))
    n = len(source.labels)
    places = {"tlbench": Path(folder).parent} | (
        {"memory": Path("/dev/shm")} if Path("/dev/shm").is_dir() else {})
    rates: dict[str, list[float]] = {"keras": [], "on disk": []} | {place: [] for place in places}
    for repeat in range(3):
        start = time.perf_counter()
        dataset = keras.utils.image_dataset_from_directory(
            folder, image_size=(size, size), batch_size=32, shuffle=False, verbose=False)
        seen = sum(len(y) for _, y in dataset)
        rates["keras"].append(seen / (time.perf_counter() - start))
        for place, parent in places.items():
            with tempfile.TemporaryDirectory(dir=parent) as cache:
                start = time.perf_counter()
                decoded_images(source, "bench", size, np.arange(n), Path(cache), fill_limit=n)
                rates[place].append(n / (time.perf_counter() - start))
                wait_for_syncs()
                if place == "tlbench":
                    rates["on disk"].append(n / (time.perf_counter() - start))
        print(f"  repeat {repeat}: " + ", ".join(f"{name} {values[-1]:.0f}/s"
                                                 for name, values in rates.items()),
              file=sys.stderr, flush=True)
    print(json.dumps({"images": n} | {name: statistics.median(values)
                                      for name, values in rates.items()}))


def decode_rate(folder: Path, size: int) -> dict:
    """The rate section in a fresh process (TensorFlow's thread pools as a user's)."""
    result = subprocess.run([sys.executable, __file__, "--rate-child", str(folder), str(size)],
                            capture_output=True, text=True, check=True)
    sys.stderr.write(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(folder: Path, n: int, strategy: str, args: argparse.Namespace, cache: Path,
        code: str | None) -> dict:
    """One whole `python -m tlbench` process; its wall time and logged metrics."""
    store = cache.parent / f"mlflow-{strategy}.db"
    overrides = ["data=folder", f"data.path={folder}", f"data.input_size={args.size}",
                 f"backbone={args.backbone}", "backbone.weights=null", f"strategy={strategy}",
                 "trainer.epochs=1", "trainer.patience=null", "data.train_size=all",
                 f"tracking.uri=sqlite:///{store}", f"hydra.run.dir={cache.parent}/out"]
    env = dict(os.environ, TLBENCH_CACHE=str(cache), PYTHONUNBUFFERED="1")
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tlbench", *overrides], env=env,
                            cwd=cache.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        return {"wall": wall, "error": result.stderr.strip().splitlines()[-1][:200]}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    (found,) = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    metrics = found.data.metrics
    decoded = "decoded " in result.stderr
    return {"wall": wall, "rss": metrics["process_peak_rss_mb"],
            "test_accuracy": metrics["test_accuracy"], "decoded": decoded}


def described(result: dict) -> str:
    """One run's figures as a phrase."""
    if "error" in result:
        return f"FAILED ({result['error']})"
    fill = " (decoding the folder)" if result["decoded"] else ""
    return (f"{result['wall']:.0f} s{fill}, peak RSS {result['rss']:.0f} MiB, test accuracy "
            f"{result['test_accuracy']:.3f}")


def fits_in_memory(n: int, size: int) -> bool:
    """Whether the old in-memory splits (float32) of n images fit in a third of the memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return n * size * size * 3 * 4 * 1.3 < total / 3


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rate_child:
        rate_child(args.rate_child[0], int(args.rate_child[1]))
        return
    sizes = sorted(int(n) for n in args.images.split(","))
    strategies = args.strategies.split(",")
    folders = {n: jpeg_folder(args.work / f"jpeg-{n}", n) for n in sizes}
    print(f"{args.backbone}, random weights, {args.size} px, 1 epoch per phase, "
          f"data.train_size=all; {os.cpu_count()} cores", flush=True)
    if not args.no_rate:
        rates = decode_rate(folders[sizes[0]], args.size)
        print(f"decode rate on {rates['images']} JPEGs at {args.size} px: "
              f"image_dataset_from_directory {rates['keras']:.0f} images/s, tlbench's cache "
              f"fill {rates['tlbench']:.0f} images/s: {rates['tlbench'] / rates['keras']:.2f}x "
              f"(until the rows are on disk: {rates['on disk']:.0f} images/s, "
              f"{rates['on disk'] / rates['keras']:.2f}x)", flush=True)
        if "memory" in rates:
            print(f"  the same fill into /dev/shm (no disk): {rates['memory']:.0f} images/s: "
                  f"{rates['memory'] / rates['keras']:.2f}x", flush=True)
    codes = {"this": None} | ({"against": args.against} if args.against else {})
    results: dict[tuple, dict] = {}
    for n in sizes:
        for name, code in codes.items():
            if code and not fits_in_memory(n, args.size):
                print(f"{name}: {n} images skipped (would not fit in memory)", flush=True)
                continue
            with tempfile.TemporaryDirectory(dir=args.work) as scratch:
                cache = Path(scratch) / "cache"
                for strategy in strategies:
                    result = run(folders[n], n, strategy, args, cache, code)
                    results[(name, n, strategy)] = result
                    print(f"{name}: {n} images, {strategy}: {described(result)}", flush=True)
    for name in codes:
        for strategy in strategies:
            measured = [(n, results[(name, n, strategy)]["rss"]) for n in sizes
                        if "rss" in results.get((name, n, strategy), {})]
            if len(measured) >= 2:
                (n0, r0), (n1, r1) = measured[0], measured[-1]
                print(f"{name}, {strategy}: peak RSS grows {(r1 - r0) / (n1 - n0):.4f} MiB per "
                      f"extra image ({n0} -> {n1} images: {r0:.0f} -> {r1:.0f} MiB)")


if __name__ == "__main__":
    main()
