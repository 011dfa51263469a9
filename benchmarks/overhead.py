"""What a cached run costs beyond its training: per-run breakdown, marginal run, grid ratios.

    python benchmarks/overhead.py [--runs 20] [--repeats 3] [--grid none|quick|fe|pf|all]
                                  [--against DIR] [--variant OVERRIDE...]
                                  [--common OVERRIDE...]

Every figure is whole processes of `python -m tlbench -m ...` on digits59 at 32 px, random
weights (backbone.weights=null), 10 epochs, no early stopping, each with its own sqlite store.

1. Marginal cached run: with the feature cache filled, an N-run sequential feature-extraction
   sweep of mobilenetv2 (trainer.lr varies: same cache entry, same shapes) and a 1-run sweep,
   interleaved, `--repeats` times. Marginal = (T_N - T_1) / (N - 1), median over repeats; both
   processes plain `python -m tlbench`, as a user runs it.
2. Per-run breakdown of the N-run sweep (its last N - 1 runs, cached), from one more N-run process
   per repeat (instrumenting a process costs it 0.4-1 s: its patching imports the stage modules,
   Keras and TensorFlow included, before Hydra starts; so it is not one of the processes the
   marginal run is taken from). The stage functions are wrapped with timers in that process: resume
   check (store check + finished_run), set-up (prepare.prepare), features (frozen.cache's
   frozen_datasets), head (strategy train minus features, fit and evaluation: the base's
   recorded facts, building and adapting the head; a base built there, on a miss of those records,
   would count too), fit (train.fit), evaluation (train.evaluate), logging (tracked_run start/end,
   log_prepared, log_result, the confusion matrix) and other (the rest of `run`: tags, strategy
   object). Then the run's total; Hydra's composing of job configs (every composition of the
   process, the sweeper's validation (by Hydra or from a twin's config) and the launcher's, over
   the number of jobs); the rest of the time between the end of the previous run and the start of
   this one (Hydra's job folder, `.hydra/` files and logging set-up; the task's config check,
   progress lines and job record); and their sum, per job.
3. Grids (`--grid`): the same jobs with the cache on (starting empty) and with cache.enabled=false
   (the seed recipe: frozen base inside the model, fit on images), each side one process, run
   alternately. fe: mobilenetv2 + resnet50 x train_size 10/50/all x seeds 0/1/2 (18 runs);
   pf: the same with strategy=partial_finetune; quick: mobilenetv2 x 10/all x seed 0 (2 runs).
   The floor of the cached feature-extraction grid: process start (a 1-job dry run: Python,
   Hydra, MLflow) + TensorFlow's import + the cache fills' feature_seconds (one forward pass per
   backbone and seed over the source) + every run's epochs at its steady-state epoch time.

`--against DIR` (a folder holding another `tlbench` package, e.g. a copy of an older commit's
`tlbench/` with `conf/` and `sweeps/` copied into it) runs sections 1 and 2 for that code too, on
PYTHONPATH, interleaved process by process with this checkout's, and section 3's cached grid
(against the same seed recipe run, this checkout's): a before/after comparison. `--variant
OVERRIDE...` does the same for this checkout with those overrides added to every job (e.g.
`trainer.threads=1`); the seed recipe run gets them too, so each variant's ratio is like for like.
`--common OVERRIDE...` adds overrides to every job of every side, replacing the settings above
they name (e.g. `backbone=resnet50 backbone.weights=PATH`, a weights file instead of random
weights).

The machine is shared: compare ratios taken in the same invocation, not absolute seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = ["data=digits59", "backbone.weights=null", "backbone.input_size=32", "trainer.epochs=10",
          "trainer.patience=null", "tracking.experiment=overhead"]
STAGES = ("resume check", "set-up", "features", "head", "fit", "evaluation", "logging", "other")
TOTALS = ("total", "composing", "between jobs", "per job")
GIVEN: list[str] = []  # --common: in every job, in place of the settings of the same keys
MAX_RUNS = 40
LRS = tuple(f"{0.001 + 0.0001 * i:.4f}" for i in range(MAX_RUNS))  # one cache entry, one shape


# --- child process: `python -m tlbench` with timers around its stages ---------------------------

def stage_module(name: str, before: str):
    """A stage module by its name here, or by its name before the stage packages (#31) where
    the tlbench imported (the older code `--against` names) has no such package: tlbench.features
    for tlbench.frozen.cache, and so on. (An editable install's finder would serve the new
    name from this checkout, so the package folder decides, not an ImportError.)"""
    import tlbench

    package = Path(tlbench.__file__).parent / name.split(".")[1]
    return importlib.import_module(name if package.is_dir() else before)


def instrument(out_path: str) -> None:
    """Wrap the stage functions with timers; write one dict of stage seconds per run at exit."""
    import atexit

    import tlbench.__main__ as cli
    from tlbench import prepare
    from tlbench.strategy import base

    cache = stage_module("tlbench.frozen.cache", "tlbench.features")
    runs = stage_module("tlbench.tracking.runs", "tlbench.track")
    store = stage_module("tlbench.tracking.store", "tlbench.store")
    train = stage_module("tlbench.training.train", "tlbench.train")
    timings: list[dict[str, float]] = []
    current: dict[str, float] = {}

    def timed(owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                current[stage] = current.get(stage, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    original_run, original_tracked = cli.run, runs.tracked_run

    def run(*args, **kwargs):
        current.clear()
        start = time.perf_counter()
        nonlocal composing
        between = start - timings[-1]["ended"] - composing if timings else 0.0
        composing = 0.0
        try:
            return original_run(*args, **kwargs)
        finally:
            ended = time.perf_counter()
            timings.append(dict(current, total=ended - start, ended=ended, between=between))

    @contextlib.contextmanager
    def tracked_run(*args, **kwargs):
        start = time.perf_counter()
        manager = original_tracked(*args, **kwargs)
        run_id = manager.__enter__()
        current["logging"] = current.get("logging", 0.0) + time.perf_counter() - start
        try:
            yield run_id
        except BaseException:
            if not manager.__exit__(*sys.exc_info()):
                raise
        else:
            start = time.perf_counter()
            manager.__exit__(None, None, None)
            current["logging"] += time.perf_counter() - start

    from tlbench import compat

    ConfigLoaderImpl = compat.hydra_config_loader()  # noqa: N806  (the class it times)

    composed: list[float] = []  # every job config composed, validating or launching
    composing = 0.0  # seconds of it since the last run started
    depth = 0  # the sweeper's composition calls Hydra's: timed once

    def timed_composition(original):
        def wrapper(*args, **kwargs):
            nonlocal composing, depth
            depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth -= 1
                if not depth:
                    composed.append(time.perf_counter() - start)
                    composing += composed[-1]
        return wrapper

    def write() -> None:
        for record in timings:
            record["composing"] = sum(composed) / len(timings)
        Path(out_path).write_text(json.dumps(timings))

    from hydra.core.plugins import Plugins

    original_sweeper = Plugins.instantiate_sweeper

    def instantiate_sweeper(*args, **kwargs):
        """The sweeper, its own compositions (by Hydra or from a twin's config) timed too (its
        module is Hydra's to import, so its instance is patched, not its class)."""
        sweeper = original_sweeper(*args, **kwargs)
        if getattr(sweeper, "configs", None) is not None:
            sweeper.configs.compose = timed_composition(sweeper.configs.compose)
        return sweeper

    ConfigLoaderImpl.load_sweep_config = timed_composition(ConfigLoaderImpl.load_sweep_config)
    Plugins.instantiate_sweeper = instantiate_sweeper
    cli.run, runs.tracked_run = run, tracked_run
    timed(store, "check_tracking_store", "resume check")
    timed(runs, "finished_run", "resume check")
    timed(prepare, "prepare", "set-up")
    timed(cache, "frozen_datasets", "features")
    timed(base.Strategy, "train", "strategy")
    timed(train, "fit", "fit")
    timed(train, "evaluate", "evaluation")
    for name in ("log_prepared", "log_result", "log_confusion_matrix"):
        timed(runs, name, "logging")
    atexit.register(write)
    cli.main()


# --- parent: whole processes, timed --------------------------------------------------------------

def tlbench(args: list[str], folder: Path, breakdown: bool = False,
            code: str | None = None) -> tuple[float, list[dict]]:
    """Run `python -m tlbench -m <args>` (optionally instrumented, optionally with the tlbench
    package found in `code`) with its own store in a fresh folder; returns wall seconds and, if
    instrumented, the per-run stage seconds."""
    folder.mkdir(parents=True)
    stages = folder / "stages.json"
    given = {override.split("=")[0] for override in GIVEN}
    args = [o for o in args if o.split("=")[0] not in given] + GIVEN
    command = [sys.executable, __file__, "--child", str(stages)] if breakdown else \
        [sys.executable, "-m", "tlbench"]
    command += ["-m", *args, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
                f"hydra.sweep.dir={folder / 'multirun'}"]
    start = time.perf_counter()
    env = os.environ | ({"PYTHONPATH": code} if code else {})
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, json.loads(stages.read_text()) if breakdown else []


def stage_table(runs: list[dict]) -> dict[str, float]:
    """Mean seconds per stage over the runs; `head` and `other` derived from the nested timers."""
    rows = []
    for run in runs:
        inner = sum(run.get(s, 0.0) for s in ("features", "fit", "evaluation"))
        row = {stage: run.get(stage, 0.0) for stage in STAGES}
        row["head"] = run.get("strategy", 0.0) - inner
        row["other"] = run["total"] - sum(row[s] for s in STAGES if s != "other")
        row["total"] = run["total"]
        row["composing"] = run["composing"]
        row["between jobs"] = run["between"]
        row["per job"] = run["total"] + run["composing"] + run["between"]
        rows.append(row)
    return {key: statistics.mean(row[key] for row in rows) for key in (*STAGES, *TOTALS)}


Side = tuple[str | None, tuple[str, ...]]  # a tlbench package folder (None: this one), overrides


def marginal(work: Path, runs: int, repeats: int, codes: dict[str, Side]) -> None:
    """Sections 1 and 2: the N-run and 1-run cached sweeps and the instrumented N-run one,
    interleaved (and, with several sides, interleaved between them too)."""
    job = [*COMMON, "backbone=mobilenetv2", "strategy=feature_extraction", "data.train_size=all",
           f"cache.dir={work / 'cache'}"]
    tlbench([*job, "trainer.lr=0.001"], work / "fill")  # fills the cache, untimed
    singles: dict[str, list[float]] = {name: [] for name in codes}
    sweeps: dict[str, list[float]] = {name: [] for name in codes}
    breakdowns: dict[str, list[dict]] = {name: [] for name in codes}
    for repeat in range(repeats):
        for name, (code, extra) in codes.items():
            folder = work / name
            singles[name].append(tlbench([*job, *extra, "trainer.lr=0.001"],
                                         folder / f"one-{repeat}", code=code)[0])
            many = [*job, *extra, "trainer.lr=" + ",".join(LRS[:runs])]
            sweeps[name].append(tlbench(many, folder / f"many-{repeat}", code=code)[0])
            timed, stages = tlbench(many, folder / f"timed-{repeat}", breakdown=True, code=code)
            breakdowns[name] += stages[1:]
            print(f"{name} repeat {repeat}: 1 run {singles[name][-1]:.1f}s, {runs} runs "
                  f"{sweeps[name][-1]:.1f}s ({timed:.1f}s instrumented)", flush=True)
    tables = {name: stage_table(rows) for name, rows in breakdowns.items()}
    backbone = [o for o in [*job, *GIVEN] if o.startswith("backbone=")][-1].split("=")[1]
    print(f"\nper cached run (mean of {len(breakdowns[next(iter(codes))])} runs, {backbone} 32 "
          "px, 10 epochs):")
    print(f"  {'stage':14s}" + "".join(f"{name:>10s}" for name in codes))
    for stage in (*STAGES, *TOTALS):
        print(f"  {stage:14s}" + "".join(f"{tables[name][stage]:9.3f}s" for name in codes))
    for name in codes:
        one, many = statistics.median(singles[name]), statistics.median(sweeps[name])
        print(f"{name}: marginal cached run ({many:.1f}s - {one:.1f}s) / {runs - 1} = "
              f"{(many - one) / (runs - 1):.2f}s (medians over {repeats}); 1-run process "
              f"{one:.1f}s")


GRIDS = {
    "quick": ("feature_extraction", "mobilenetv2", "10,all", "0"),
    "fe": ("feature_extraction", "mobilenetv2,resnet50", "10,50,all", "0,1,2"),
    "pf": ("partial_finetune", "mobilenetv2,resnet50", "10,50,all", "0,1,2"),
}


def grid_floor(work: Path, store: Path) -> tuple[float, float]:
    """Process start + TensorFlow import, and the cached grid's forward passes + steady epochs."""
    start_s, _ = tlbench([*COMMON, "dry_run=true"], work / "floor-dry")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow, keras"], check=True,
                   capture_output=True)
    start_s += time.perf_counter() - started
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("overhead").experiment_id],
                              "tags.config_hash != ''", max_results=1000)  # not the parent
    work_s = sum(r.data.metrics["feature_seconds"] * (r.data.metrics["frozen_rows_computed"] > 0)
                 + r.data.metrics["steady_epoch_seconds"] * r.data.metrics["epochs_run"]
                 for r in runs)
    return start_s, work_s


def grid(work: Path, name: str, codes: dict[str, Side]) -> None:
    """Section 3: the grid cached (empty cache) with each side, then as the seed recipe (this
    checkout's, once per set of overrides), one process each."""
    strategy, backbones, sizes, seeds = GRIDS[name]
    jobs = [*COMMON, f"strategy={strategy}", f"backbone={backbones}",
            f"data.train_size={sizes}", f"seed={seeds}"]
    n = len(backbones.split(",")) * len(sizes.split(",")) * len(seeds.split(","))
    cached = {code: tlbench([*jobs, *extra, f"cache.dir={work / name / code / 'cache'}"],
                            work / name / code / "cached", code=path)[0]
              for code, (path, extra) in codes.items()}
    recipes = {extra: tlbench([*jobs, *extra, "cache.enabled=false"],
                              work / name / f"recipe-{index}")[0]
               for index, extra in enumerate(dict.fromkeys(e for _, e in codes.values()))}
    for code, seconds in cached.items():
        recipe = recipes[codes[code][1]]
        print(f"\ngrid {name} ({strategy}, {n} runs): seed recipe {recipe:.1f}s, tlbench "
              f"({code}) {seconds:.1f}s, speed-up {recipe / seconds:.2f}x", flush=True)
        if strategy == "feature_extraction":
            start_s, work_s = grid_floor(work / name / code,
                                         work / name / code / "cached" / "mlflow.db")
            floor = start_s + work_s
            print(f"floor {floor:.1f}s (process start + TensorFlow import {start_s:.1f}s, "
                  f"forward passes + steady-state epochs {work_s:.1f}s): tlbench ({code}) takes "
                  f"{seconds / floor:.2f}x the floor")


def main() -> None:
    """Parse the options and run the sections asked for."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        out = sys.argv[2]
        sys.argv = ["tlbench", *sys.argv[3:]]
        instrument(out)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20,
                        help=f"runs in the N-run sweep (2-{MAX_RUNS}: more, less start-up noise)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--grid", default="none", help="none, quick, fe, pf or all (fe and pf)")
    parser.add_argument("--against", help="folder with another tlbench package, compared")
    parser.add_argument("--variant", nargs="+", metavar="OVERRIDE",
                        help="this checkout with these overrides added, compared")
    parser.add_argument("--common", nargs="+", metavar="OVERRIDE", default=[],
                        help="overrides added to every job")
    args = parser.parse_args()
    if not 2 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs {args.runs}: give 2 to {MAX_RUNS}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    GIVEN.extend(args.common)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        codes: dict[str, Side] = {"this": (None, ())}
        if args.against:
            codes["against"] = (args.against, ())
        if args.variant:
            codes["variant"] = (None, tuple(args.variant))
            print(f"variant: this checkout with {' '.join(args.variant)}", flush=True)
        if args.repeats:
            marginal(work, args.runs, args.repeats, codes)
        for name in {"none": [], "all": ["fe", "pf"]}.get(args.grid, [args.grid]):
            grid(work, name, codes)


if __name__ == "__main__":
    main()
