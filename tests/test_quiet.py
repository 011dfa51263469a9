"""Keras imported quietly, without importing IPython where no notebook runs."""

import os
import subprocess
import sys

IMPORT = """
import sys
{before}
from tlbench.quiet import import_keras
import_keras()
from keras.src.saving import file_editor
print("IPython" in sys.modules, file_editor.ipython is not None)
import IPython
print(IPython.WHICH)
"""


def _run(tmp_path, before: str = "") -> list[str]:
    """Run the import in a fresh process whose IPython is a stand-in package."""
    package = tmp_path / "IPython"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text('WHICH = "stand-in"\n')
    done = subprocess.run([sys.executable, "-c", IMPORT.format(before=before)], text=True,
                          capture_output=True, timeout=300,
                          env=os.environ | {"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")[-3:-1]


def test_keras_is_imported_without_ipython_which_stays_importable(tmp_path):
    assert _run(tmp_path) == ["False False", "stand-in"]


def test_a_running_ipython_is_left_to_keras(tmp_path):
    assert _run(tmp_path, before="import IPython") == ["True True", "stand-in"]


def _import_stderr(level: str | None) -> str:
    """What a fresh process's `import_keras()` writes to stderr at TF_CPP_MIN_LOG_LEVEL=level
    (None: unset, tlbench's default of 3)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    done = subprocess.run([sys.executable, "-c", "from tlbench.quiet import import_keras; "
                           "import_keras()"], text=True, capture_output=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_tensorflows_start_up_notices_follow_the_log_level():
    """Logged before absl honours TF_CPP_MIN_LOG_LEVEL (the oneDNN notice; with the
    `tensorflow` package on a machine without a CUDA driver, "Could not find cuda drivers",
    each twice): hidden by default, all shown at 0, as absl shows its lines."""
    assert _import_stderr(None) == ""
    shown = _import_stderr("0")
    assert shown.count("oneDNN custom operations are on") == 2
    assert "All log messages before absl::InitializeLog() is called" in shown
