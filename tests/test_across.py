"""Across datasets: dataset names, the configurations × datasets comparison on known numbers, and
the report CLI over a real sqlite MLflow store whose sweep spans five datasets.

    dataset (group)   A resnet50 · feature_extr.   B resnet50 · full_retrain   C mobilenetv2 · fe
    d1 (g1)           .90                               .80                         .70
    d2 (g1)           .60                               .65                         .50
    d3 (g2)           .95                               .85                         .85
    d4 (g2)           .70                               .60                         .50
    d5 (g2)           .88                               .86                         .84

Each mean is of two seeds at ±0.01. Ranks: A 1, 2, 1, 1, 1 (mean 1.2); B 2, 1, 2.5, 2, 2 (1.9);
C 3, 3, 2.5, 3, 3 (2.9). Friedman chi2 = 12·5/(3·4)·(1.2² + 1.9² + 2.9² − 3·4²/4) = 7.30,
F_F = 4·7.30/(5·2 − 7.30) = 10.81, CD = 2.343·√(3·4/(6·5)) = 1.48. D (vgg16) ran on d1 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tlbench.report import fetch
from tlbench.report.across import (
    across,
    dataset_names,
    naming_columns,
    protocol_line,
    scores_across,
    split_by_dataset,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "A": ("resnet50", "feature_extraction"),
    "B": ("resnet50", "full_retrain"),
    "C": ("mobilenetv2", "feature_extraction"),
}
MEANS = {
    "d1": (0.90, 0.80, 0.70),
    "d2": (0.60, 0.65, 0.50),
    "d3": (0.95, 0.85, 0.85),
    "d4": (0.70, 0.60, 0.50),
    "d5": (0.88, 0.86, 0.84),
}
GROUPS = {"d1": "g1", "d2": "g1", "d3": "g2", "d4": "g2", "d5": "g2"}


def params(backbone: str, strategy: str, task: str, seed: int) -> dict[str, str]:
    """Params as the harness logs them for a suite's task (noise differs per task)."""
    return {
        "backbone.name": backbone,
        "strategy.name": strategy,
        "data.name": "synthetic",
        "data.task": task,
        "data.group": GROUPS[task],
        "data.noise": str(len(task) * 10 + int(task[1])),
        "data.train_size": "all",
        "seed": str(seed),
    }


def log_run(
    client: MlflowClient, experiment: str, run_params: dict[str, str], accuracy: float, start: int
) -> None:
    """One finished run of sweep 'suite', logged through the MLflow client."""
    run = client.create_run(
        experiment,
        start_time=start,
        tags={"sweep_id": "suite", "config_hash": "-".join(run_params.values())},
    )
    client.log_batch(
        run.info.run_id,
        params=[Param(k, v) for k, v in run_params.items()],
        metrics=[
            Metric("test_accuracy", accuracy, start, 0),
            Metric("n_train", 100, start, 0),
            Metric("fit_seconds", 10.0, start, 0),
        ],
    )
    client.set_terminated(run.info.run_id, "FINISHED", end_time=start + 1000)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    """The tracking URI of the store in the module docstring, and its runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tlbench")
    start = 1_700_000_000_000
    for task, means in MEANS.items():
        for (backbone, strategy), mean in zip(CONFIGS.values(), means, strict=True):
            for seed, offset in ((0, -0.01), (1, 0.01)):
                start += 1000
                log_run(
                    client, experiment, params(backbone, strategy, task, seed), mean + offset, start
                )
    log_run(client, experiment, params("vgg16", "feature_extraction", "d1", 0), 0.99, start + 1)
    runs = fetch.fetch_runs(client, experiment, fetch.sweep_filter("suite", None))
    return uri, runs


def test_dataset_is_the_task_name_else_the_source_and_its_differing_settings() -> None:
    runs = pd.DataFrame(
        {
            "params.data.name": ["shapes", "shapes", "digits", "synthetic", None],
            "params.data.n_classes": ["4", "10", None, None, None],
            "params.data.train_size": ["10", "all", "10", "all", None],
            "params.data.task": ["null", "null", "null", "noisy", None],
        }
    )
    assert dataset_names(runs).tolist()[:4] == [
        "shapes (n_classes=4)",
        "shapes (n_classes=10)",
        "digits",
        "noisy",
    ]
    assert pd.isna(dataset_names(runs)[4])  # a run that logged no data is no dataset
    assert list(split_by_dataset(runs)) == [
        "digits",
        "noisy",
        "shapes (n_classes=10)",
        "shapes (n_classes=4)",
    ]


def test_split_orders_datasets_by_group_then_name(store: tuple[str, pd.DataFrame]) -> None:
    assert list(split_by_dataset(store[1])) == ["d1", "d2", "d3", "d4", "d5"]


def summaries(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each dataset's per-configuration summary, as the report computes it."""
    from tlbench.report.analysis import analyse

    return {
        name: analyse(part, "test_accuracy").summary
        for name, part in split_by_dataset(runs).items()
    }


def test_across_ranks_z_scores_and_wins_by_hand(store: tuple[str, pd.DataFrame]) -> None:
    result = across(
        summaries(store[1]), naming_columns([["backbone.name", "strategy.name"]]), GROUPS
    )
    a, b, c = (
        "resnet50 · feature_extraction",
        "resnet50 · full_retrain",
        "mobilenetv2 · feature_extraction",
    )
    assert list(result.means.index) == [a, b, c]  # best mean rank first
    assert result.left_out == ["vgg16 · feature_extraction"]
    assert result.ranks().mean(axis=1).round(6).tolist() == [1.2, 1.9, 2.9]
    assert result.wins().tolist() == [4, 1, 0]
    # d3: .95, .85, .85 -> mean .8833, std (ddof 0) .04714: z = +1.414, -0.707, -0.707
    assert result.z_scores()["d3"].round(3).tolist() == [1.414, -0.707, -0.707]
    assert result.group_means().round(4).loc[a].tolist() == [0.75, 0.8433]
    assert result.cis.loc[a, "d1"] == pytest.approx(12.7062 * 0.0141421 / 2**0.5, rel=1e-4)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m tlbench report ARGS` in a subprocess, as a user runs it."""
    environment = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tlbench", "report", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def report(store: tuple[str, pd.DataFrame], tmp_path_factory) -> tuple[Path, str, str]:
    """(output folder, markdown, stdout) of the report CLI over the five-dataset sweep."""
    out = tmp_path_factory.mktemp("report")
    done = cli("--tracking-uri", store[0], "--sweep", "suite", "--out", str(out), cwd=out)
    assert done.returncode == 0, done.stderr
    return out, (out / "tlbench-suite.md").read_text(encoding="utf-8"), done.stdout


def test_report_has_the_across_section_with_friedman_and_nemenyi(report) -> None:
    out, text, stdout = report
    assert "The runs span 5 datasets: d1, d2, d3, d4, d5" in stdout
    section = text.split("## Across datasets", 1)[1].split("\n## ", 1)[0]
    assert "| resnet50 · feature\\_extraction · all | 0.900 ±0.127 |" in section
    assert "d1 (g1)" in section and "mean g2" in section
    assert (
        "Left out (did not finish on every dataset): vgg16 · feature\\_extraction · all." in section
    )
    assert "**Protocol:** tune (trained on train, val held out for choosing) on every" in section
    assert "χ² = 7.30 (p = 0.026)" in section
    assert "Iman–Davenport F = 10.81 with (2, 8) degrees of freedom" in section
    assert "= 1.48." in section
    assert (out / "tlbench-suite-cd-diagram.png").read_bytes().startswith(b"\x89PNG")
    assert "![Critical-difference diagram](tlbench-suite-cd-diagram.png)" in section


def test_each_dataset_has_its_own_tables_named_without_data_settings(report) -> None:
    _, text, _ = report
    for task in MEANS:
        assert f"\n## Dataset {task}\n" in text
    d3 = text.split("## Dataset d3", 1)[1].split("## Dataset d4", 1)[0]
    assert "### Ranking by test\\_accuracy" in d3
    assert "| 1 | resnet50 | feature\\_extraction | all | 2 | 0.950 |" in d3
    assert "synthetic" not in d3.split("### Winner", 1)[0]  # no data.name, task or noise
    assert "vgg16" not in d3


def test_fewer_than_five_datasets_say_why_there_is_no_test(store, tmp_path: Path) -> None:
    done = cli(
        "--tracking-uri",
        store[0],
        "--sweep",
        "suite",
        "--out",
        str(tmp_path),
        "--filter",
        "params.`data.task` != 'd5'",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "tlbench-suite.md").read_text(encoding="utf-8")
    assert "no Friedman test: it needs at least 3 configurations" in text
    assert "(here 3 and 4)" in text
    assert not list(tmp_path.glob("*cd-diagram.png"))


def test_protocol_line_names_each_datasets_protocol_when_they_differ() -> None:
    line = protocol_line({"d1": "tune", "d2": "final"})
    assert line.startswith("**Protocol per dataset:** d1: tune (trained on train")
    assert "d2: final (trained on train+val with the chosen values)." in line


def test_scores_across_gives_each_scores_tau_per_dataset_and_its_mean() -> None:
    def taus(logme: float, size: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "strategy.name": ["feature_extraction"],
                "data.train_size": ["all"],
                "backbones": [3],
                "logme_tau": [logme],
                "params_total_tau": [size],
            }
        )

    text = scores_across(
        {"d1": taus(1.0, -1 / 3), "d2": taus(1 / 3, float("nan")), "d3": pd.DataFrame()},
        ["strategy.name", "data.train_size"],
    )
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == (
        "| score | strategy.name | data.train\\_size | d1 | d2 | mean tau | datasets |"
    )
    assert rows[1] == "| logme | feature\\_extraction | all | +1.00 | +0.33 | +0.67 | 2 |"
    assert rows[2] == "| params\\_total | feature\\_extraction | all | -0.33 | – | -0.33 | 1 |"
    assert scores_across({"d1": pd.DataFrame()}, []) is None


def test_the_offline_suite_runs_and_reports_across_its_five_tasks(tmp_path: Path) -> None:
    """`-m +suite=offline` through the real CLI at a reduced scale (the pixels floor, two heads
    x two learning rates, 5 images per class, 1 epoch), then the report with its CD diagram."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    environment = os.environ | {"PYTHONPATH": str(REPO)}
    sweep = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlbench",
            "-m",
            "+suite=offline",
            "backbone=pixels",
            "head=logreg,dense",
            "trainer.lr=0.01,0.001",
            "data.train_size=5",
            "data.input_size=16",
            "trainer.epochs=1",
            "trainer.patience=null",
            f"tracking.uri={uri}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "20 done" in sweep.stderr + sweep.stdout
    done = cli("--tracking-uri", uri, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "The runs span 5 datasets: digits59, shapes10, shapes4, synthetic_n10, synthetic_n60"
        in done.stdout
    )
    report = next((tmp_path / "out").glob("tlbench-offline-*.md")).read_text(encoding="utf-8")
    section = report.split("## Across datasets", 1)[1].split("\n## ", 1)[0]
    assert "| digits59 (natural) | shapes10 (shapes) | shapes4 (shapes) |" in section
    assert "**Friedman test** over 4 configurations and 5 datasets" in section
    assert len(list((tmp_path / "out").glob("tlbench-offline-*-cd-diagram.png"))) == 1
    for task in ("digits59", "shapes4", "synthetic\\_n60"):  # names escaped as markdown
        assert f"\n## Dataset {task}\n" in report
