"""`python -m tlbench.report`: rank a sweep's configurations from MLflow into a markdown report.

connect -> experiment -> sweep (given or latest) -> fetch runs (and the experiment's score runs)
-> aggregate (after --tune, on validation) -> plots -> markdown.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from tlbench.errors import TlbenchError, whole_number

DESCRIPTION = """\
Rank a tlbench sweep's configurations by the mean of a metric over seeds, with 95% CIs, from
MLflow; write <out>/<experiment>-<sweep>.md with its PNG plots beside it."""
EPILOG = """\
A configuration is every logged param except the seed; its seeds are replicates.
Score runs of `python -m tlbench rank` (tag tlbench.kind=score) of the current scores version
(tag scores.version) in the experiment are set beside the accuracies they predict, with Kendall's
tau per strategy and size, and the tau of model size (params, FLOPs where logged) as a baseline.
Statistical ties: configurations whose 95% CI overlaps the leader's are marked "tied".
Nothing is selected on test: --tune chooses hyperparameters on val_accuracy (the validation
split), then ranks the chosen values by --metric; without --tune every value of a swept
hyperparameter is a configuration of its own, compared on --metric.
An unreachable tracking server fails after one retry ($MLFLOW_HTTP_REQUEST_MAX_RETRIES).
Examples: python -m tlbench.report --sweep multirun_2025-01-01_12-00-00-1a2b3c \\
  --filter "params.`backbone.name` = 'resnet50'" --out reports/
  python -m tlbench report --tune trainer.lr,strategy.lr_scale   (after -m +sweep=tuned)
"""


def param_names(text: str) -> tuple[str, ...]:
    """argparse type for a comma-separated list of param names, e.g. 'trainer.lr,seed'."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated param names, got {text!r}")
    return tuple(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; every option is documented in --help."""
    parser = argparse.ArgumentParser(
        prog="python -m tlbench.report", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tlbench",
                        help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--sweep", metavar="SWEEP_ID",
                        help="sweep_id tag of the runs to report (default: the sweep of the "
                             "experiment's most recently started run)")
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder for the report and its PNGs (default: %(default)s)")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--metric", default="test_accuracy",
                        help="metric to rank by, higher is better (default: %(default)s)")
    parser.add_argument("--filter", metavar="MLFLOW_FILTER",
                        help="extra MLflow filter ANDed with the sweep, e.g. "
                             "\"params.`backbone.name` = 'resnet50'\" (dotted names need "
                             "backticks)")
    parser.add_argument("--top", type=whole_number(1), metavar="N",
                        help="show only the N best configurations in the ranking table "
                             "(default: all)")
    parser.add_argument("--tune", type=param_names, default=(), metavar="KEY[,KEY...]",
                        help="params to choose on validation, e.g. trainer.lr: per "
                             "configuration, the value(s) with the best mean val_accuracy over "
                             "seeds are kept and ranked by --metric (default: none)")
    return parser.parse_args(argv)


def report_stem(experiment: str, sweep_id: str) -> str:
    """A file-name-safe '<experiment>-<sweep_id>'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{experiment}-{sweep_id}").strip("._") or "report"


def write_report(args: argparse.Namespace) -> Path:
    """Fetch the sweep's runs, aggregate them and write the markdown report and plots."""
    # Imported here so that --help and argument errors answer without loading MLflow or plots.
    from tlbench.report import fetch, plots, render, stats
    from tlbench.report.across import split_by_dataset
    from tlbench.report.analysis import Source, analyse
    from tlbench.report.stats import trained_runs
    from tlbench.tracking.store import redact, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    client = fetch.connect(uri)
    experiment = fetch.experiment_id(client, args.experiment)
    sweep_id = args.sweep or fetch.latest_sweep_id(client, experiment)
    print(f"Fetching sweep {sweep_id} of experiment {args.experiment} from {redact(uri)}")
    started = time.perf_counter()
    runs = fetch.fetch_runs(client, experiment, fetch.sweep_filter(sweep_id, args.filter),
                            on_page=lambda count: print(f"  {count} runs fetched"))
    if runs.empty:
        matching = " matching --filter" if args.filter else ""
        raise TlbenchError(f"sweep {sweep_id!r} has no runs{matching} in experiment "
                           f"{args.experiment!r}")
    print(f"Fetched {len(runs)} runs in {time.perf_counter() - started:.1f}s")
    score_runs = fetch.fetch_runs(client, experiment, fetch.SCORE_FILTER)
    print(f"Fetched {len(score_runs)} score runs (python -m tlbench rank) of the experiment")

    analysis = analyse(runs, args.metric, score_runs, args.tune)
    if analysis.tuned:
        print(f"Tuned {', '.join(analysis.tuned)} on {stats.SELECTION_METRIC} per configuration")
    print(f"Aggregated {len(analysis.summary)} configurations")
    if analysis.scores is not None and analysis.scores.other_version:
        print(f"Left out {analysis.scores.other_version} score runs of another scores version")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = report_stem(args.experiment, sweep_id)
    source = Source(args.experiment, sweep_id, uri, args.metric, args.filter, args.top)
    datasets = split_by_dataset(trained_runs(runs))
    if len(datasets) >= 2:
        print(f"The runs span {len(datasets)} datasets: {', '.join(datasets)}")
        text, figures = across_datasets_report(analysis, datasets, score_runs, source, args,
                                               stem)
    else:
        figures = {} if analysis.summary.empty else plots.draw_all(analysis, args.metric,
                                                                     args.out, stem)
        text = render.render_markdown(analysis, source, figures)
    path = args.out / f"{stem}.md"
    path.write_text(text, encoding="utf-8")
    attach_to_sweep_run(client, experiment, sweep_id, [path, *(args.out / f for f in
                                                             figures.values())])
    return path


def across_datasets_report(whole, datasets: dict, score_runs, source, args: argparse.Namespace,
                           stem: str) -> tuple[str, dict[str, str]]:
    """A report over several datasets: each aggregated on its own, then compared across;
    returns the markdown and every figure (key -> file name)."""
    from tlbench.report import plots, render
    from tlbench.report.across import (
        across_section,
        dataset_groups,
        dataset_protocols,
        naming_columns,
        scores_across,
    )
    from tlbench.report.analysis import analyse

    per_dataset, figures = {}, {}
    for name, runs in datasets.items():
        analysis = analyse(runs, args.metric, score_runs, args.tune)
        drawn = {} if analysis.summary.empty else plots.draw_all(
            analysis, args.metric, args.out, report_stem(stem, name))
        per_dataset[name] = (analysis, drawn)
        figures |= {f"{name}/{key}": file for key, file in drawn.items()}
    ranked = {name: a for name, (a, _) in per_dataset.items() if not a.summary.empty}
    across = across_section({name: a.summary for name, (a, _) in per_dataset.items()},
                            naming_columns([a.shown for a in ranked.values()]),
                            dataset_groups(whole.runs), args.metric, args.out, stem,
                            dataset_protocols(datasets))
    cd_diagram = f"{stem}-cd-diagram.png"
    if (args.out / cd_diagram).is_file() and cd_diagram in across:
        figures["cd-diagram"] = cd_diagram
    scores = scores_across({name: a.scores.taus for name, a in ranked.items()
                            if a.scores is not None},
                           next((a.scores.group for a in ranked.values() if a.scores), []))
    across = across if scores is None else f"{across}\n\n{scores}"
    return render.render_datasets(whole, per_dataset, source, across), figures


def attach_to_sweep_run(client, experiment: str, sweep_id: str, files: list[Path]) -> None:
    """Log the report and its plots under `report/` of the sweep's parent run, if it has one."""
    from tlbench.tracking.store import sweep_parent_id

    try:
        parent = sweep_parent_id(client, experiment, sweep_id)
        for file in files if parent else []:
            client.log_artifact(parent, str(file), "report")
    except Exception as error:  # noqa: BLE001 - the report is written; attaching is an extra
        print(f"warning: report not attached to the sweep's MLflow run: {error}", file=sys.stderr)
        return
    if parent:
        print(f"Attached the report to the sweep's parent run {parent} (artifacts: report/)")


def main(argv: list[str] | None = None) -> int:
    """Run the report; a bad input or unwritable --out is one line on stderr and status 1."""
    args = parse_args(argv)
    # Fail in seconds, not minutes, when a tracking server is down (MLflow retries 7 times).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    try:
        path = write_report(args)
    except (TlbenchError, OSError) as error:
        print(f"tlbench.report: error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
