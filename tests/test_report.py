"""Report stage: statistics on known numbers, a real sqlite MLflow store, and the CLI end to end.

Sweep "sweep-a" (values chosen so every answer is known by hand), n_train in brackets:

    size      config (backbone · strategy)   test_accuracy (seeds)   fit_seconds   trainable
    10 (100)  A resnet50 · full_retrain        .95 .97 (0, 1)          500           23.5M
    10 (100)  B resnet50 · feature_extraction  .90     (3)             50            20,490
    total:50  C resnet50 · full_retrain        .85 .86 .87             100           23.5M
    total:50  D resnet50 · feature_extraction  .80 .82 .84             10 12 14      20,490
    total:50  E mobilenetv2 · feature_extr.    .70 .70 .70             5             12,810
    total:50  F resnet50 · scratch             .40 .42                 90            23.5M

Before those, an E run (seed 0) scoring .10 that its later rerun replaces, and a D run (seed 0)
that FAILED before its rerun finished; after them, a FAILED run whose name holds `|` and a
newline, and a RUNNING run. "sweep-b" starts later.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats as scipy_stats

from tlbench.errors import TlbenchError
from tlbench.report import agreement, fetch, markdown, render, render_scores, stats
from tlbench.report.__main__ import main as report_main
from tlbench.report.analysis import Analysis, Source, analyse
from tlbench.scores import SCORES_VERSION

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302652729749462  # Student t quantile, 0.975, 2 degrees of freedom
T_975_DF1 = 12.706204736174694  # ... 1 degree of freedom
FAILED_NAME = "vgg16 | bad\nname"
FAILED_ERROR = "ValueError: boom | <b>bold</b> `tick`"
TRANSFER = {  # label -> (backbone, strategy, size, n_train, [(seed, accuracy, fit_seconds)])
    "A": ("resnet50", "full_retrain", "10", 100, [(0, 0.95, 500), (1, 0.97, 500)]),
    "B": ("resnet50", "feature_extraction", "10", 100, [(3, 0.90, 50)]),
    "C": ("resnet50", "full_retrain", "total:50", 50, [(0, 0.85, 100), (1, 0.86, 100),
                                                       (2, 0.87, 100)]),
    "D": ("resnet50", "feature_extraction", "total:50", 50, [(0, 0.80, 10), (1, 0.82, 12),
                                                             (2, 0.84, 14)]),
    "E": ("mobilenetv2", "feature_extraction", "total:50", 50, [(0, 0.70, 5), (1, 0.70, 5),
                                                                (2, 0.70, 5)]),
    "F": ("resnet50", "scratch", "total:50", 50, [(0, 0.40, 90), (1, 0.42, 90)]),
}
TRAINABLE = {("resnet50", "feature_extraction"): 20_490, ("mobilenetv2", "feature_extraction"):
             12_810}
CURRENT = str(SCORES_VERSION)
LABELS = {key: f"{b} · {s} · {size}" for key, (b, s, size, _, _) in TRANSFER.items()}


def run_params(backbone: str, strategy: str, size: str, seed: int) -> dict[str, str]:
    """Params as the harness logs them; trainer.epochs depends on the strategy only."""
    return {"backbone.name": backbone, "backbone.weights": "imagenet", "strategy.name": strategy,
            "strategy.head.units": "0", "data.name": "digits", "data.train_size": size,
            "trainer.epochs": "30" if strategy == "scratch" else "10", "seed": str(seed)}


def log_run(client: MlflowClient, experiment: str, name: str, start: int, status: str,
            params: dict[str, str], metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Log one run through the MLflow client, as the harness would."""
    run = client.create_run(experiment, start_time=start, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, start, 0) for k, v in metrics.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=start + 1000)


def config_hash(backbone: str, strategy: str, size: str, seed: int) -> str:
    """A stand-in for the harness's hash of the resolved config (seed included)."""
    return f"{backbone}-{strategy}-{size}-{seed}"


def log_sweeps(client: MlflowClient) -> str:
    """The store described in the module docstring; returns the experiment id."""
    experiment = client.create_experiment("tlbench")
    start = 1_700_000_000_000
    e_seed0 = ("mobilenetv2", "feature_extraction", "total:50", 0)
    log_run(client, experiment, "mobilenetv2-feature_extraction-ntotal:50-s0", start, "FINISHED",
            run_params(*e_seed0), {"test_accuracy": 0.10, "n_train": 50},
            {"sweep_id": "sweep-a", "config_hash": config_hash(*e_seed0)})
    d_seed0 = ("resnet50", "feature_extraction", "total:50", 0)
    log_run(client, experiment, "resnet50-feature_extraction-ntotal:50-s0", start + 500, "FAILED",
            run_params(*d_seed0), {}, {"sweep_id": "sweep-a", "error": "OSError: disk full",
                                       "config_hash": config_hash(*d_seed0)})
    for backbone, strategy, size, n_train, seeds in TRANSFER.values():
        for seed, accuracy, fit in seeds:
            start += 1000
            total = 2_270_000 if backbone == "mobilenetv2" else 23_600_000
            command = (f"python -m tlbench backbone={backbone} strategy={strategy} "
                       f"data.train_size={size} seed={seed}")
            log_run(client, experiment, f"{backbone}-{strategy}-n{size}-s{seed}", start,
                    "FINISHED", run_params(backbone, strategy, size, seed),
                    {"test_accuracy": accuracy, "fit_seconds": fit, "n_train": n_train,
                     "params_trainable": TRAINABLE.get((backbone, strategy), 23_500_000),
                     "params_total": total},
                    {"sweep_id": "sweep-a", "command": command, "device": "cpu",
                     "mlflow_version": "3.17.2",
                     "config_hash": config_hash(backbone, strategy, size, seed)})
    log_run(client, experiment, FAILED_NAME, start + 1000, "FAILED",
            run_params("vgg16", "full_retrain", "10", 0), {},
            {"sweep_id": "sweep-a", "error": FAILED_ERROR,
             "config_hash": config_hash("vgg16", "full_retrain", "10", 0)})
    log_run(client, experiment, "mobilenetv2-full_retrain-n10-s0", start + 2000, "RUNNING",
            run_params("mobilenetv2", "full_retrain", "10", 0), {}, {"sweep_id": "sweep-a"})
    for seed in (0, 1):
        log_run(client, experiment, f"late-s{seed}", start + 10_000 + seed, "FINISHED",
                run_params("mobilenetv2", "feature_extraction", "10", seed),
                {"test_accuracy": 0.5 + seed / 10, "n_train": 100}, {"sweep_id": "sweep-b"})
    log_run(client, experiment, "untagged", start + 20_000, "FINISHED", {}, {}, {})
    other = client.create_experiment("other")
    log_run(client, other, "elsewhere", start + 30_000, "FINISHED",
            run_params("vgg16", "scratch", "10", 0), {"test_accuracy": 1.0},
            {"sweep_id": "sweep-a"})
    return experiment


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, MlflowClient, str]:
    """(tracking URI, client, experiment id) of a fresh sqlite store holding the sweeps."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, log_sweeps(client)


@pytest.fixture(scope="module")
def runs(store: tuple[str, MlflowClient, str]) -> pd.DataFrame:
    """Sweep A's runs as fetched from MLflow."""
    _, client, experiment = store
    return fetch.fetch_runs(client, experiment, fetch.sweep_filter("sweep-a", None))


@pytest.fixture(scope="module")
def analysis(runs: pd.DataFrame) -> Analysis:
    """Sweep A aggregated on test_accuracy."""
    return analyse(runs, "test_accuracy")


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m tlbench.report ARGS` in a subprocess, as a user runs it."""
    environment = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run([sys.executable, "-m", "tlbench.report", *args], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(store: tuple[str, MlflowClient, str],
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(report path, markdown, stdout) of one CLI run over sweep A."""
    uri, _, _ = store
    out = tmp_path_factory.mktemp("reports")
    done = cli("--tracking-uri", uri, "--sweep", "sweep-a", "--out", str(out), cwd=out)
    assert done.returncode == 0, done.stderr
    path = out / "tlbench-sweep-a.md"
    return path, path.read_text(encoding="utf-8"), done.stdout


def labels(frame: pd.DataFrame) -> list[str]:
    """Configuration labels (backbone · strategy · size) of a summary-like frame."""
    return [stats.config_label(row, list(stats.ALWAYS_SHOWN)) for _, row in frame.iterrows()]


def table_cells(line: str) -> list[str]:
    """Cells of a markdown table row, split on unescaped pipes."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


# Statistics on plain numbers.

def test_ci_half_width_matches_student_t_by_hand() -> None:
    half = stats.ci_half_width(np.array([0.02, 0.01, 0.0]), np.array([3, 2, 1]))
    assert half[0] == pytest.approx(T_975_DF2 * 0.02 / math.sqrt(3), rel=1e-9)
    assert half[0] == pytest.approx(0.0496828, abs=1e-7)
    assert half[1] == pytest.approx(T_975_DF1 * 0.01 / math.sqrt(2), rel=1e-9)
    assert math.isnan(half[2])


def test_welch_half_width_matches_scipy_welch_test() -> None:
    transfer, scratch = [0.85, 0.86, 0.87], [0.40, 0.42]
    half = stats.welch_half_width(np.std(transfer, ddof=1), 3, np.std(scratch, ddof=1), 2)
    expected = scipy_stats.ttest_ind(transfer, scratch, equal_var=False).confidence_interval()
    assert np.mean(transfer) - np.mean(scratch) - half == pytest.approx(expected.low, abs=1e-9)
    assert half == pytest.approx(0.0597700, abs=1e-7)
    assert stats.welch_half_width(0.0, 3, 0.0, 3) == 0.0
    assert math.isnan(stats.welch_half_width(0.1, 3, np.nan, 1))


def test_pareto_mask_keeps_only_undominated_points() -> None:
    benefit = np.array([0.9, 0.8, 0.7, 0.9, 0.95, 0.6, np.nan])
    cost = np.array([10.0, 5.0, 20.0, 10.0, 100.0, 5.0, 1.0])
    # 0 and 3 are identical (neither dominates); 2 is beaten by 0; 5 by 1; 6 has no value.
    assert stats.pareto_mask(benefit, cost).tolist() == [True, True, False, True, True, False,
                                                         False]


def test_tie_verdicts_compare_ci_with_the_leader() -> None:
    ranked = pd.DataFrame({"mean": [0.9, 0.85, 0.7, 0.8], "ci": [0.05, 0.01, 0.05, np.nan],
                           "n": [3, 3, 3, 1]})
    assert stats.tie_verdicts(ranked).tolist() == ["leader", "tied", "behind", "unreplicated"]
    assert stats.tie_verdicts(ranked.iloc[[3, 0]]).tolist() == ["leader", "unreplicated"]


# Aggregation of runs fetched from a real MLflow store.

def test_fetch_follows_page_tokens_and_stays_in_the_experiment(
        store: tuple[str, MlflowClient, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, client, experiment = store
    monkeypatch.setattr(fetch, "PAGE_SIZE", 5)
    counts: list[int] = []
    runs = fetch.fetch_runs(client, experiment, fetch.sweep_filter("sweep-a", None),
                            on_page=counts.append)
    assert counts == [5, 10, 15, 18]
    assert runs["run_id"].is_unique and "elsewhere" not in set(runs["run_name"])


def test_filter_is_anded_with_the_sweep(store: tuple[str, MlflowClient, str]) -> None:
    _, client, experiment = store
    only = fetch.sweep_filter("sweep-a", "params.`backbone.name` = 'mobilenetv2'")
    runs = fetch.fetch_runs(client, experiment, only)
    assert sorted(runs["run_name"]) == ["mobilenetv2-feature_extraction-ntotal:50-s0",
                                        "mobilenetv2-feature_extraction-ntotal:50-s0",
                                        "mobilenetv2-feature_extraction-ntotal:50-s1",
                                        "mobilenetv2-feature_extraction-ntotal:50-s2",
                                        "mobilenetv2-full_retrain-n10-s0"]


def test_latest_sweep_is_the_sweep_of_the_last_started_tagged_run(
        store: tuple[str, MlflowClient, str]) -> None:
    _, client, experiment = store
    assert fetch.latest_sweep_id(client, experiment) == "sweep-b"


def test_ranking_orders_configurations_by_mean(analysis: Analysis) -> None:
    summary = analysis.summary
    assert labels(summary) == [LABELS[k] for k in "ABCDEF"]
    assert summary["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert summary["n"].tolist() == [2, 1, 3, 3, 3, 2]
    assert analysis.shown == ["backbone.name", "strategy.name", "data.train_size"]


def test_summary_statistics_match_hand_computation(analysis: Analysis) -> None:
    d = analysis.summary.set_index(pd.Index(labels(analysis.summary))).loc[LABELS["D"]]
    assert d["mean"] == pytest.approx(0.82)
    assert d["std"] == pytest.approx(0.02)
    assert d["ci"] == pytest.approx(T_975_DF2 * 0.02 / math.sqrt(3))
    assert d["fit_seconds"] == pytest.approx(12.0)
    assert d["per_second"] == pytest.approx(0.82 / 12.0)
    assert d["seeds"] == ("0", "1", "2")
    a = analysis.summary.iloc[0]
    assert a["ci"] == pytest.approx(T_975_DF1 * np.std([0.95, 0.97], ddof=1) / math.sqrt(2))


def test_ties_with_the_leader_are_marked(analysis: Analysis) -> None:
    # Leader A: 0.96 ± 0.127 reaches down to 0.833; C (0.86 + 0.025) and D (0.82 + 0.050) reach
    # it, E (0.70 ± 0) and F (0.41 + 0.127) do not, and B has a single seed.
    assert analysis.summary["verdict"].tolist() == ["leader", "unreplicated", "tied", "tied",
                                                    "behind", "behind"]


def test_winners_per_size_are_ordered_by_n_train(analysis: Analysis) -> None:
    winners = analysis.winners
    assert winners["data.train_size"].tolist() == ["total:50", "10"]
    assert labels(winners) == [LABELS["C"], LABELS["A"]]
    assert winners["tied_with"].tolist() == [("resnet50 · feature_extraction",), ()]
    best = analysis.by_strategy.set_index("data.train_size")
    assert best.loc["total:50"].to_dict() == pytest.approx(
        {"feature_extraction": 0.82, "full_retrain": 0.86, "scratch": 0.41})


def test_gain_over_scratch_uses_welch_ci(analysis: Analysis) -> None:
    gains = analysis.gains
    assert labels(gains) == [LABELS["D"], LABELS["C"]]
    assert gains["gain"].tolist() == pytest.approx([0.41, 0.45])
    assert gains["gain_ci"].iloc[1] == pytest.approx(0.0597700, abs=1e-7)
    assert gains["gain_verdict"].tolist() == ["better", "better"]


def test_no_scratch_runs_gives_no_gains(runs: pd.DataFrame) -> None:
    without = analyse(runs[runs["params.strategy.name"] != "scratch"], "test_accuracy")
    assert without.gains.empty and len(without.summary) == 5


def test_pareto_fronts(analysis: Analysis) -> None:
    assert labels(analysis.time_front) == [LABELS[k] for k in "EDBA"]
    assert labels(analysis.params_front) == [LABELS[k] for k in "EBA"]


def test_unknown_metric_is_a_one_line_error(runs: pd.DataFrame) -> None:
    with pytest.raises(TlbenchError, match="no run logged metric 'test_acc'; logged: .*fit"):
        analyse(runs, "test_acc")


# Rendering.

def test_escape_neutralises_markdown_and_html() -> None:
    line = markdown.table(["run"], [["a|b\nc `d` <script>*e*"]], "l").splitlines()[2]
    assert table_cells(line) == [r" a\|b c \`d\` &lt;script&gt;\*e\* "]


def test_fence_outlasts_backticks_in_the_code() -> None:
    assert markdown.fence("echo ````x").startswith("`````bash\n")


@pytest.mark.parametrize(("command", "seeds", "expected"), [
    ("python -m tlbench backbone=resnet50 strategy=feature_extraction data.train_size=10 seed=0",
     ("0", "1", "2"), "python -m tlbench -m backbone=resnet50 strategy=feature_extraction "
                      "data.train_size=10 seed=0,1,2"),
    ("python -m tlbench backbone=vgg16", ("0", "1"),
     "python -m tlbench -m backbone=vgg16 seed=0,1"),
    ("python -m tlbench -m backbone=vgg16 seed=4", ("4",), "python -m tlbench -m backbone=vgg16 "
                                                           "seed=4"),
    ("python -m tlbench seed=7", ("7",), "python -m tlbench seed=7"),
    ("tlbench -m backbone=vgg16 seed=0", ("0", "1"), "tlbench -m backbone=vgg16 seed=0,1"),
])
def test_rerun_command_lists_every_seed(command: str, seeds: tuple[str, ...],
                                        expected: str) -> None:
    assert render.rerun_command(command, seeds) == expected


def test_top_limits_the_ranking_table(analysis: Analysis) -> None:
    source = Source("tlbench", "sweep-a", "sqlite://", "test_accuracy", top=2)
    ranking = render.ranking(analysis, source, {})
    assert "Top 2 of 6 configurations" in ranking
    assert [line.split(" | ")[0] for line in ranking.splitlines() if line.startswith("| ")] == [
        "| rank", "| ---:", "| 1", "| 2"]


def test_sweep_without_finished_runs_still_lists_failures(runs: pd.DataFrame) -> None:
    failed_only = analyse(runs[runs["status"] != "FINISHED"], "test_accuracy")
    source = Source("tlbench", "sweep-a", "sqlite://", "test_accuracy")
    markdown = render.render_markdown(failed_only, source, {})
    assert "No finished run logged **test\\_accuracy**: nothing to rank." in markdown
    assert "| FAILED |" in markdown and "## Ranking" not in markdown


def test_a_sweep_whose_runs_failed_before_any_metric_is_reported_with_their_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A sweep that only failed (a bad data.path: no metric at all) gets its report of
    failures, as one whose failed runs logged metrics does, not "no run logged metric"."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tlbench")
    for seed in (0, 1):
        log_run(client, experiment, f"bad-s{seed}", 1_700_000_000_000 + seed, "FAILED",
                run_params("mobilenetv2", "feature_extraction", "all", seed), {},
                {"sweep_id": "sweep-f", "error": "TlbenchError: data.path: no such file"})
    out = tmp_path / "reports"
    assert report_main(["--tracking-uri", uri, "--out", str(out)]) == 0, capsys.readouterr().err
    markdown = (out / "tlbench-sweep-f.md").read_text(encoding="utf-8")
    assert "- **Runs:** 2: 0 finished, 2 failed" in markdown
    assert "No finished run logged **test\\_accuracy**: nothing to rank." in markdown
    assert markdown.count("| FAILED | TlbenchError: data.path: no such file |") == 2


# The CLI end to end.

def test_cli_writes_report_with_ranking_and_progress(report: tuple[Path, str, str]) -> None:
    _, markdown, stdout = report
    assert "Fetched 18 runs" in stdout and "Wrote " in stdout
    assert "- **Runs:** 18: 15 finished, 2 failed, 1 other" in markdown
    rows = [table_cells(line) for line in markdown.splitlines() if re.match(r"\| \d+ \| ", line)]
    ranking = [cells for cells in rows if len(cells) == 15]
    assert [(c[1].strip(), c[2].strip()) for c in ranking] == [
        ("resnet50", r"full\_retrain"), ("resnet50", r"feature\_extraction"),
        ("resnet50", r"full\_retrain"), ("resnet50", r"feature\_extraction"),
        ("mobilenetv2", r"feature\_extraction"), ("resnet50", "scratch")]
    assert [c[7].strip() for c in ranking] == ["±0.127", "–", "±0.025", "±0.050", "±0.000",
                                               "±0.127"]
    assert "**No clear winner:** 2 other configuration(s)" in markdown
    assert r"Winning strategy: **full\_retrain** at total:50 (tied), 10." in markdown


def test_cli_plots_are_valid_pngs_linked_from_the_report(report: tuple[Path, str, str]) -> None:
    path, markdown, _ = report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(images) == 3
    for image in images:
        png = path.parent / image
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(png) as picture:
            picture.verify()
        with Image.open(png) as picture:
            assert picture.size[0] > 300 and picture.size[1] > 200


def test_cli_learning_curves_keep_accuracy_bars_and_axis_within_0_and_1(
        store: tuple[str, MlflowClient, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A's two seeds (.95, .97) give 0.96 ± 0.127 in the table; the plot's bar stops at 1.0.
    The figures the CLI saves are recorded on their way to disk and read back as drawn."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    saved: dict[str, Figure] = {}
    save = Figure.savefig

    def recorded(figure: Figure, path, **kwargs) -> None:
        saved[Path(path).name] = figure
        save(figure, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recorded)
    uri, _, _ = store
    assert report_main(["--tracking-uri", uri, "--sweep", "sweep-a", "--out", str(tmp_path)]) == 0
    assert "±0.127" in (tmp_path / "tlbench-sweep-a.md").read_text(encoding="utf-8")
    figure = saved["tlbench-sweep-a-learning-curves.png"]
    bars = [segment for ax in figure.axes for collection in ax.collections
            if isinstance(collection, LineCollection) for segment in collection.get_segments()]
    ends = sorted((segment[:, 1].min(), segment[:, 1].max()) for segment in bars)
    assert len(bars) == 6 and max(top for _, top in ends) == 1.0  # one bar per configuration
    (cut,) = [(bottom, top) for bottom, top in ends if top == 1.0]  # A's: 0.96 + 0.127 = 1.087
    assert cut[0] == pytest.approx(0.96 - 0.127, abs=1e-3)
    for ax in figure.axes:
        assert 0.0 <= ax.get_ylim()[0] < ax.get_ylim()[1] <= 1.0


def test_cli_lists_failed_runs_escaped(report: tuple[Path, str, str]) -> None:
    _, markdown, _ = report
    failed = [line for line in markdown.splitlines() if line.startswith("| vgg16")]
    assert len(failed) == 1
    assert table_cells(failed[0]) == [r" vgg16 \| bad name ", " FAILED ",
                                      r" ValueError: boom \| &lt;b&gt;bold&lt;/b&gt; \`tick\` ",
                                      " no "]
    assert not any(line.startswith("name") for line in markdown.splitlines())
    assert ("| resnet50-feature\\_extraction-ntotal:50-s0 | FAILED | OSError: disk full | yes |"
            in markdown)
    assert "| mobilenetv2-full\\_retrain-n10-s0 | RUNNING | – | no |" in markdown


def test_cli_reproduce_commands_cover_all_seeds(report: tuple[Path, str, str]) -> None:
    _, markdown, _ = report
    reproduce = markdown.split("## Reproduce the top configurations")[1].split("## ")[0]
    commands = re.findall(r"^python .*$", reproduce, flags=re.MULTILINE)
    assert commands == [
        "python -m tlbench -m backbone=resnet50 strategy=full_retrain data.train_size=10 seed=0,1",
        "python -m tlbench backbone=resnet50 strategy=feature_extraction data.train_size=10 seed=3",
        "python -m tlbench -m backbone=resnet50 strategy=full_retrain data.train_size=total:50 "
        "seed=0,1,2"]


def test_cli_defaults_to_latest_sweep_and_env_tracking_uri(
        store: tuple[str, MlflowClient, str], tmp_path: Path) -> None:
    uri, _, _ = store
    done = cli("--out", "out", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    assert "Fetching sweep sweep-b" in done.stdout
    markdown = (tmp_path / "out" / "tlbench-sweep-b.md").read_text(encoding="utf-8")
    assert "- **Runs:** 2: 2 finished, 0 failed, 0 other" in markdown
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--experiment", "nope"], "no experiment named 'nope' (known: Default, other, tlbench)"),
    (["--sweep", "no-such-sweep"], "sweep 'no-such-sweep' has no runs in experiment 'tlbench'"),
    (["--sweep", "sweep-a", "--filter", "params.seed = '99'"], "has no runs matching --filter"),
    (["--sweep", "sweep-a", "--filter", "params.seed ~ 1"], "cannot search runs with filter"),
    (["--metric", "bogus"], "no run logged metric 'bogus'"),
    (["--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"],
     "no MLflow tracking store at /nonexistent/dir/mlflow.db"),
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot read tracking store http://127.0.0.1:9"),
    (["--tracking-uri", "postgresql://tl:s3cr3t@127.0.0.1:9/runs"],  # in seconds, not ~100 s
     "--tracking-uri=postgresql://tl:***@127.0.0.1:9/runs: database unreachable"),
])
def test_bad_input_is_one_line_on_stderr_and_status_1(
        store: tuple[str, MlflowClient, str], tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    uri, _, _ = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "reports"
    assert report_main(["--tracking-uri", uri, "--out", str(out), *args]) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("tlbench.report: error: ") and message in stderr
    assert not out.exists()


def test_unwritable_out_is_one_line_error(store: tuple[str, MlflowClient, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    uri, _, _ = store
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert report_main(["--tracking-uri", uri, "--sweep", "sweep-b", "--out", str(blocker)]) == 1
    assert capsys.readouterr().err.startswith("tlbench.report: error: [Errno 17] File exists")


def test_cli_bad_input_exits_nonzero_without_traceback(store: tuple[str, MlflowClient, str],
                                                        tmp_path: Path) -> None:
    uri, _, _ = store
    done = cli("--tracking-uri", uri, "--experiment", "nope", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == ("tlbench.report: error: no experiment named 'nope' "
                                   "(known: Default, other, tlbench)")


def test_cli_help_documents_every_option(tmp_path: Path) -> None:
    done = cli("--help", cwd=tmp_path)
    for option in ("--experiment", "--sweep", "--out", "--tracking-uri", "--metric", "--filter",
                   "--top", "--tune"):
        assert option in done.stdout
    assert "MLFLOW_TRACKING_URI" in done.stdout and "backticks" in done.stdout
    assert "Nothing is selected on test" in done.stdout


# Transferability scores beside the accuracy reached (score runs of `python -m tlbench rank`).
#
# Sweep "sweep-s": feature_extraction at size 10 on 3 backbones (seeds 0, 1) and at size all on 2;
# score runs (no sweep_id) for the same bases, data and seeds, plus one for a seed the sweep never
# trained and an older duplicate that the later one replaces. LogME orders size 10 exactly as the
# accuracies (tau +1), H-score exactly backwards (-1), LEEP exists for two backbones only.
# Score runs carry scores.version = SCORES_VERSION; the latest run of resnet50 at size 10 seed 0 is
# untagged (version 1) and one more is tagged "1": both must be left out, not replace the scores.
# Baselines: params_total (logged by the trained runs) orders size 10 resnet50 > vgg16 >
# mobilenetv2, tau +1/3 against the accuracies; flops (logged by the score runs only) vgg16 >
# resnet50 > mobilenetv2, tau -1/3.
SCORED_ACCURACY = {("resnet50", "10"): (0.90, 0.92), ("mobilenetv2", "10"): (0.80, 0.82),
                   ("vgg16", "10"): (0.70, 0.74), ("resnet50", "all"): (0.95, 0.97),
                   ("mobilenetv2", "all"): (0.93, 0.93)}
SCORES = {"resnet50": {"logme": 3.0, "hscore": 1.0, "leep": -0.5},
          "mobilenetv2": {"logme": 2.0, "hscore": 2.0, "leep": -0.9},
          "vgg16": {"logme": 1.0, "hscore": 3.0}}
PARAMS_TOTAL = {"resnet50": 23_600_000, "mobilenetv2": 2_270_000, "vgg16": 14_700_000}
FLOPS = {"resnet50": 4.1e9, "mobilenetv2": 0.3e9, "vgg16": 15.5e9}


@pytest.fixture(scope="module")
def scored_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, MlflowClient, str]:
    """A store holding sweep-s and its score runs (see above)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('scored') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tlbench")
    start = 1_700_000_000_000
    for (backbone, size), accuracies in SCORED_ACCURACY.items():
        for seed, accuracy in enumerate(accuracies):
            start += 1000
            params = run_params(backbone, "feature_extraction", size, seed)
            log_run(client, experiment, f"{backbone}-fe-n{size}-s{seed}", start, "FINISHED",
                    params, {"test_accuracy": accuracy, "n_train": 100 if size == "10" else 600,
                             "fit_seconds": 1.0, "params_total": PARAMS_TOTAL[backbone]},
                    {"sweep_id": "sweep-s",
                     "config_hash": config_hash(backbone, "feature_extraction", size, seed)})
            score_params = {k: v for k, v in params.items() if not k.startswith(("strategy.",
                                                                                  "trainer."))}
            for late, shift in ((0, 5.0), (1, 0.0)):  # the later run replaces the earlier one
                log_run(client, experiment, f"score-{backbone}-n{size}-s{seed}",
                        start + 100 + late, "FINISHED", score_params,
                        {name: value + shift for name, value in SCORES[backbone].items()}
                        | {"flops": FLOPS[backbone]},
                        {"tlbench.kind": "score", "scores.version": CURRENT,
                         "config_hash": f"score-{backbone}-{size}-{seed}"})
    log_run(client, experiment, "score-vgg16-n10-s7", start + 5000, "FINISHED",
            run_params("vgg16", "feature_extraction", "10", 7) | {"strategy.name": "x"},
            {"logme": 99.0}, {"tlbench.kind": "score", "scores.version": CURRENT,
                              "config_hash": "score-vgg16-10-7"})
    for name, version in (("untagged", {}), ("tagged-1", {"scores.version": "1"})):
        log_run(client, experiment, f"score-resnet50-n10-s0-{name}", start + 5500, "FINISHED",
                run_params("resnet50", "feature_extraction", "10", 0), {"logme": -99.0},
                {"tlbench.kind": "score", "config_hash": "score-resnet50-10-0"} | version)
    # A score run that carries the sweep's id must still stay out of the trained-run tables.
    log_run(client, experiment, "score-tagged", start + 6000, "FINISHED",
            {"backbone.name": "vgg16", "strategy.name": "feature_extraction",
             "data.train_size": "10", "seed": "0"}, {"logme": 1.0},
            {"tlbench.kind": "score", "scores.version": CURRENT, "sweep_id": "sweep-s",
             "config_hash": "tagged"})
    return uri, client, experiment


@pytest.fixture(scope="module")
def scored(scored_store: tuple[str, MlflowClient, str]) -> Analysis:
    """sweep-s analysed with the experiment's score runs."""
    _, client, experiment = scored_store
    runs = fetch.fetch_runs(client, experiment, fetch.sweep_filter("sweep-s", None))
    score_runs = fetch.fetch_runs(client, experiment, fetch.SCORE_FILTER)
    return analyse(runs, "test_accuracy", score_runs)


def test_score_runs_stay_out_of_the_trained_tables(scored: Analysis) -> None:
    assert len(scored.summary) == 5 and scored.summary["n"].tolist() == [2] * 5
    assert "score-tagged" not in set(scored.runs["run_name"])


def test_scores_join_the_accuracy_they_predict(scored: Analysis) -> None:
    points = scored.scores.points
    assert scored.scores.found == 12  # latest per config_hash: 10, the seed-7 run, the tagged one
    ten = points[points["data.train_size"] == "10"].set_index("backbone.name")
    assert ten["mean"].to_dict() == pytest.approx({"resnet50": 0.91, "mobilenetv2": 0.81,
                                                   "vgg16": 0.72})
    assert ten["logme"].to_dict() == {"resnet50": 3.0, "mobilenetv2": 2.0, "vgg16": 1.0}
    assert ten["score_n"].tolist() == [2, 2, 2]  # seed 7 was never trained: left out
    assert np.isnan(ten.loc["vgg16", "leep"])


def test_score_runs_of_another_version_are_left_out(scored: Analysis) -> None:
    resnet = scored.scores.points.set_index(["backbone.name", "data.train_size"]).loc[
        ("resnet50", "10")]
    assert resnet["logme"] == 3.0 and resnet["score_n"] == 2  # not the later -99 of version 1
    assert scored.scores.other_version == 2


def test_current_version_treats_untagged_runs_as_version_1() -> None:
    runs = pd.DataFrame({"tags.scores.version": [CURRENT, None, "1", f" {CURRENT} ", "3"]})
    current, other = agreement.current_version(runs)
    assert current.index.tolist() == [0, 3] and other == 3
    assert agreement.current_version(pd.DataFrame({"run_id": ["a"]}))[1] == 1


def test_model_size_baselines_get_their_own_tau(scored: Analysis) -> None:
    taus = scored.scores.taus.set_index("data.train_size")
    accuracy = [0.91, 0.81, 0.72]  # resnet50, mobilenetv2, vgg16
    expected = scipy_stats.kendalltau([23_600_000, 2_270_000, 14_700_000], accuracy)
    assert taus.loc["10", "params_total_tau"] == pytest.approx(expected.statistic)
    assert taus.loc["10", "params_total_tau"] == pytest.approx(1 / 3)
    assert taus.loc["10", "params_total_p"] == pytest.approx(expected.pvalue)
    # FLOPs are logged by the score runs only: the baseline falls back on them.
    assert taus.loc["10", "flops_tau"] == pytest.approx(-1 / 3)
    assert taus.loc["all", "params_total_k"] == 2


def test_baselines_that_no_run_logged_are_left_out_silently(
        scored_store: tuple[str, MlflowClient, str]) -> None:
    _, client, experiment = scored_store
    runs = fetch.fetch_runs(client, experiment, fetch.sweep_filter("sweep-s", None))
    score_runs = fetch.fetch_runs(client, experiment, fetch.SCORE_FILTER)
    analysis = analyse(runs, "test_accuracy", score_runs.drop(columns="metrics.flops"))
    source = Source("tlbench", "sweep-s", "sqlite://", "test_accuracy")
    section = render_scores.scores_vs_accuracy(analysis, source, {"scores-vs-accuracy": "x.png"})
    assert "params tau |" in section and "FLOPs" not in section


def test_kendall_tau_per_strategy_and_size(scored: Analysis) -> None:
    taus = scored.scores.taus.set_index("data.train_size")
    assert taus.loc["10", "backbones"] == 3
    assert taus.loc["10", "logme_tau"] == pytest.approx(1.0)
    assert taus.loc["10", "hscore_tau"] == pytest.approx(-1.0)
    assert taus.loc["10", "logme_p"] == pytest.approx(
        scipy_stats.kendalltau([3, 2, 1], [0.91, 0.81, 0.72]).pvalue)
    assert taus.loc["10", "leep_k"] == 2 and np.isnan(taus.loc["10", "leep_tau"])
    assert taus.loc["all", "backbones"] == 2 and np.isnan(taus.loc["all", "logme_tau"])


def test_report_section_says_when_tau_is_not_meaningful(
        scored_store: tuple[str, MlflowClient, str], tmp_path: Path) -> None:
    uri, _, _ = scored_store
    done = cli("--tracking-uri", uri, "--sweep", "sweep-s", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "tlbench-sweep-s.md").read_text(encoding="utf-8")
    section = markdown.split("## Scores before training vs accuracy after")[1].split("\n## ")[0]
    rows = {cells[1].strip(): [c.strip() for c in cells[2:]] for cells in
            (table_cells(line) for line in section.splitlines()
             if line.startswith(r"| feature\_extraction"))}
    assert "| data.train\\_size | backbones | logme tau | hscore tau | leep tau | nce tau | " \
        "params tau | FLOPs tau |" in section
    assert rows["10"] == ["3", "+1.00 (p=0.33)", "-1.00 (p=0.33)", "not meaningful (2 backbones)",
                          "not meaningful (0 backbones)", "+0.33 (p=1.00)", "-0.33 (p=1.00)"]
    assert rows["all"][0] == "2" and set(rows["all"][1:]) == {"not meaningful (2 backbones)",
                                                              "not meaningful (0 backbones)"}
    assert "nan" not in section.lower()
    assert ("| resnet50 | imagenet | 2 | 0.910 | 2 | 3.000 | 1.000 | -0.500 | – | 23,600,000 | "
            "4,100,000,000 |") in section
    assert (f"Score runs of scores version {SCORES_VERSION} only (tag scores.version; untagged "
            "runs are version 1): 2 score run(s) of another version left out") in section
    assert "Left out 2 score runs of another scores version" in done.stdout
    (image,) = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
    with Image.open(tmp_path / image) as picture:
        picture.verify()


def test_report_without_score_runs_says_how_to_make_them(runs: pd.DataFrame) -> None:
    analysis = analyse(runs, "test_accuracy", pd.DataFrame())
    source = Source("tlbench", "sweep-a", "sqlite://", "test_accuracy")
    section = render_scores.scores_vs_accuracy(analysis, source, {})
    assert "No score runs" in section and "python -m tlbench rank" in section


@pytest.mark.parametrize(("args", "cell"), [
    ((0.5, 0.3, 3, 6), "+0.50 (p=0.30, 3 of 6)"),
    ((-1.0, 0.33, 3, 3), "-1.00 (p=0.33)"),
    ((np.nan, np.nan, 3, 3), "undefined (constant)"),
    ((np.nan, np.nan, 1, 4), "not meaningful (1 backbone)"),
])
def test_tau_cell_says_over_what_and_why_not(args: tuple, cell: str) -> None:
    assert render_scores.tau_cell(*args) == cell


def test_fit_time_includes_the_frozen_features_a_run_paid_for(tmp_path):
    from tlbench.report.stats import tidy_runs

    runs = pd.DataFrame({
        "run_id": ["a", "b"], "status": ["FINISHED", "FINISHED"], "start_time": [1, 2],
        "params.backbone.name": ["vgg16"] * 2, "params.strategy.name": ["feature_extraction"] * 2,
        "params.data.train_size": ["5", "10"], "params.seed": ["0", "0"],
        "metrics.test_accuracy": [0.5, 0.6], "metrics.fit_seconds": [1.0, 1.0],
        "metrics.feature_seconds": [4.0, np.nan], "tags.config_hash": ["h1", "h2"],
    })
    tidy = tidy_runs(runs, "test_accuracy").set_index("data.train_size")
    assert tidy.loc["5", "fit_seconds"] == 5.0 and tidy.loc["10", "fit_seconds"] == 1.0


# Hyperparameters chosen on validation (--tune), on known numbers.

def tuning_runs() -> pd.DataFrame:
    """Two configurations x two learning rates x two seeds, plus a third configuration without
    val_accuracy. resnet50: lr 0.01 has the better mean val (.65 vs .60) but the worse test
    (.30 vs .90), so only a selection on test would pick 0.001. mobilenetv2: both lrs tie on
    val (.50), so the first in numeric order (0.0001 before 0.001) is chosen."""
    rows = []
    table = {("resnet50", "0.001"): [(0.5, 0.9), (0.7, 0.9)],
             ("resnet50", "0.01"): [(0.65, 0.3), (0.65, 0.3)],
             ("mobilenetv2", "0.001"): [(0.4, 0.6), (0.6, 0.6)],
             ("mobilenetv2", "0.0001"): [(0.5, 0.2), (0.5, 0.2)],
             ("vgg16", "0.001"): [(np.nan, 0.5), (np.nan, 0.5)]}
    for (backbone, lr), seeds in table.items():
        for seed, (val, test) in enumerate(seeds):
            rows.append({"run_id": f"{backbone}-{lr}-{seed}", "status": "FINISHED",
                         "start_time": len(rows), "params.backbone.name": backbone,
                         "params.strategy.name": "feature_extraction",
                         "params.data.train_size": "10", "params.trainer.lr": lr,
                         "params.seed": str(seed), "metrics.val_accuracy": val,
                         "metrics.test_accuracy": test})
    return pd.DataFrame(rows)


def test_tune_chooses_on_validation_never_on_test() -> None:
    analysis = analyse(tuning_runs(), "test_accuracy", tune=["trainer.lr"])
    chosen = analysis.summary.set_index("backbone.name")
    assert chosen["trainer.lr"].to_dict() == {"resnet50": "0.01", "mobilenetv2": "0.0001"}
    assert chosen["mean"].to_dict() == pytest.approx({"resnet50": 0.3, "mobilenetv2": 0.2})
    assert chosen["n"].tolist() == [2, 2]
    assert analysis.shown == ["backbone.name", "strategy.name", "data.train_size"]
    choices = analysis.choices.set_index(["backbone.name", "trainer.lr"])
    assert choices.loc[("resnet50", "0.001"), "val_mean"] == pytest.approx(0.6)
    assert not choices.loc[("vgg16", "0.001"), "chosen"]  # no val_accuracy: left out


def test_without_tune_every_learning_rate_is_its_own_configuration() -> None:
    analysis = analyse(tuning_runs(), "test_accuracy")
    assert len(analysis.summary) == 5 and "trainer.lr" in analysis.shown
    assert stats.untuned_hyperparameters(analysis.shown) == ["trainer.lr"]


def test_tuning_section_and_ranking_show_the_chosen_values() -> None:
    analysis = analyse(tuning_runs(), "test_accuracy", tune=["trainer.lr"])
    source = Source("tlbench", "sweep-t", "sqlite://", "test_accuracy")
    section = render.tuning(analysis, source, {})
    assert ("| resnet50 | feature\\_extraction | 10 | 0.01 | 0.001: 0.600 (2) · "
            "0.01: 0.650 (2) ★ |") in section
    assert "1 configuration(s) logged no val\\_accuracy: left out of the ranking." in section
    ranking = render.ranking(analysis, source, {})
    assert "| rank | backbone.name | strategy.name | data.train\\_size | trainer.lr (chosen on " \
           "val) | n |" in ranking
    assert "| 1 | resnet50 | feature\\_extraction | 10 | 0.01 | 2 | 0.300 |" in ranking
    assert "Swept and not tuned" not in ranking
    header = render.header(analysis, source, {})
    assert "- **Splits:** ranked test\\_accuracy: test; test\\_macro\\_f1: test; " \
           "val\\_accuracy: validation (used only by --tune and early stopping); " \
           "train\\_accuracy: the train subset. Nothing is selected on test" in header
    assert "- **Tuned:** trainer.lr, per configuration, by the best mean val\\_accuracy" in header


def test_untuned_swept_learning_rate_points_to_tune() -> None:
    analysis = analyse(tuning_runs(), "test_accuracy")
    source = Source("tlbench", "sweep-t", "sqlite://", "test_accuracy")
    assert ("Swept and not tuned: trainer.lr. Each value is a configuration of its own, "
            "compared on test\\_accuracy; to choose on validation instead, report with --tune "
            "trainer.lr.") in render.ranking(analysis, source, {})
    assert "- **Tuned:** nothing" in render.header(analysis, source, {})


@pytest.mark.parametrize(("tune", "message"), [
    (["trainer.lrr"], "--tune trainer.lrr: not a param of the sweep's runs; did you mean "
                      "trainer.lr?"),
    (["zzz"], "--tune zzz: not a param of the sweep's runs; params swept here: trainer.lr"),
    (["seed"], "--tune seed: seeds are replicates"),
    (["strategy.name"], "--tune strategy.name: backbone.name, strategy.name, data.train_size are "
                        "what the report compares"),
])
def test_tune_refuses_what_it_cannot_tune(tune: list[str], message: str) -> None:
    with pytest.raises(TlbenchError, match=re.escape(message)):
        analyse(tuning_runs(), "test_accuracy", tune=tune)


# --tune on a real learning-rate grid: a tiny multirun through the CLI into sqlite.

LR_GRID = ("0.0001", "0.01")


@pytest.fixture(scope="module")
def lr_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(tracking URI, workdir) of a real multirun: a dense head on pixels (the fastest real
    training there is, ~2 s a job) x 2 sizes x 2 lrs x 2 seeds, 1 epoch."""
    workdir = tmp_path_factory.mktemp("lr-grid")
    uri = f"sqlite:///{workdir}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "tlbench", "-m", "backbone=pixels", "strategy=feature_extraction",
         f"trainer.lr={','.join(LR_GRID)}", "seed=0,1", "data.train_size=5,10",
         "trainer.epochs=1", "trainer.patience=null", "data.input_size=32",
         f"tracking.uri={uri}"],
        cwd=workdir, env=env | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return uri, workdir


def best_lr_on_validation(uri: str) -> dict[str, tuple[str, str]]:
    """Per training-set size, the lr with the best mean val_accuracy over seeds (ties: the
    smaller lr) and its mean test_accuracy, straight from MLflow's runs."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tlbench").experiment_id
    val: dict[tuple[str, str], list[float]] = {}
    test: dict[tuple[str, str], list[float]] = {}
    for run in client.search_runs([experiment], "tags.config_hash != ''"):  # jobs, not the sweep
        key = (run.data.params["data.train_size"], run.data.params["trainer.lr"])
        val.setdefault(key, []).append(run.data.metrics["val_accuracy"])
        test.setdefault(key, []).append(run.data.metrics["test_accuracy"])
    assert all(len(seeds) == 2 for seeds in val.values()) and len(val) == 4
    best = {size: max(LR_GRID, key=lambda lr: (np.mean(val[(size, lr)]), -float(lr)))
            for size, _ in val}
    return {size: (lr, f"{np.mean(test[(size, lr)]):.3f}") for size, lr in best.items()}


def test_tune_on_a_real_lr_grid_picks_the_best_mean_val_accuracy(
        lr_grid: tuple[str, Path]) -> None:
    uri, workdir = lr_grid
    out = workdir / "reports"
    done = subprocess.run([sys.executable, "-m", "tlbench", "report", "--tracking-uri", uri,
                           "--tune", "trainer.lr", "--out", str(out)],
                          cwd=workdir, env=os.environ | {"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Tuned trainer.lr on val_accuracy per configuration" in done.stdout
    (path,) = out.glob("*.md")
    ranking = path.read_text(encoding="utf-8").split("## Ranking by")[1].split("\n## ")[0]
    rows = [[c.strip() for c in table_cells(line)] for line in ranking.splitlines()
            if re.match(r"\| \d+ \| ", line)]
    chosen = {row[3]: (row[4], row[6]) for row in rows}
    assert chosen == best_lr_on_validation(uri)
    assert [row[5] for row in rows] == ["2", "2"]


def test_tune_on_a_key_the_runs_lack_is_one_line_and_status_1(
        lr_grid: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    uri, workdir = lr_grid
    out = workdir / "refused"
    assert report_main(["--tracking-uri", uri, "--tune", "trainer.lr,optimizer.lr",
                        "--out", str(out)]) == 1
    stderr = capsys.readouterr().err
    assert stderr == ("tlbench.report: error: --tune optimizer.lr: not a param of the sweep's "
                      "runs; did you mean trainer.lr?\n")
    assert not out.exists()


def test_multiply_adds_get_a_column_and_a_pareto_front(runs: pd.DataFrame) -> None:
    """Runs that logged `flops` (multiply-adds) are ranked with it and get an accuracy-vs-cost
    front of their own; runs without it (older runs) leave the front out."""
    flops = {"resnet50": 3.86e9, "mobilenetv2": 0.30e9, "vgg16": 15.3e9}
    with_flops = runs.assign(**{"metrics.flops": runs["params.backbone.name"].map(flops)})
    analysis = analyse(with_flops, "test_accuracy")
    front = analysis.flops_front
    assert not front.empty and front["flops"].is_monotonic_increasing
    assert front["mean"].is_monotonic_increasing  # each costlier point must be better
    source = Source("tlbench", "sweep-a", "sqlite://", "test_accuracy")
    assert "### test\\_accuracy vs multiply-adds" in render.pareto(analysis, source, {
        "accuracy-vs-time": "x.png"})
    assert "multiply-adds" not in render.pareto(analyse(runs, "test_accuracy"), source, {
        "accuracy-vs-time": "x.png"})
