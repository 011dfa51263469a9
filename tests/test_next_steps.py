"""The closing commands' parts that the CLI tests (tests/test_cli.py) do not reach: a tracking
server's own UI, and names that need quoting."""

from __future__ import annotations

from tlbench.tracking.next_steps import report_command, ui_command


def test_a_tracking_server_is_its_own_ui():
    line = ui_command("http://127.0.0.1:5001/", "7", "quick-1a2b3c4d")
    assert line.startswith(
        "open http://127.0.0.1:5001/#/experiments/7/runs?workflowType="
        "machine_learning&orderByKey=metrics.%60test_accuracy%60"
    )
    assert line.endswith("&searchFilter=tags.sweep_id%20%3D%20%27quick-1a2b3c4d%27")


def test_a_named_experiment_and_another_store_are_quoted_and_passed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = report_command("sqlite:////data/other.db", "my runs", "sweep-1")
    assert line == (
        "python -m tlbench report --experiment 'my runs' --sweep sweep-1 "
        "--tracking-uri sqlite:////data/other.db"
    )
