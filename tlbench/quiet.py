"""Keras (and TensorFlow, on its backend) without start-up and tf.data noise; call
`import_keras()` where the run first needs Keras (not at start-up: config and store errors come
before TensorFlow's ~5 s import). On JAX or PyTorch, TensorFlow is not imported at all.

Two sources, both harmless:
- While TensorFlow loads, before absl's logging is initialised, it logs notices that
  TF_CPP_MIN_LOG_LEVEL does not filter yet: the oneDNN notice ("oneDNN custom operations are
  on ...") and, where the `tensorflow` package finds no CUDA driver, "Could not find cuda drivers
  on your machine, GPU will not be used.", each twice. The import runs with stderr captured at
  the file-descriptor level, and absl's lines pass only at or above TF_CPP_MIN_LOG_LEVEL's
  severity (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), as they would once absl is initialised;
  every other line is passed on.
- With op determinism on (`trainer.deterministic=true`), tf.data rewrites Keras' parallel map
  into a sequential MapDataset and copies its `use_unbounded_threadpool` attribute, which
  MapDataset lacks; TensorFlow logs that at ERROR level (`E0000 ... NodeDef mentions attribute
  use_unbounded_threadpool`) and ignores the attribute. TF_CPP_MIN_LOG_LEVEL=3 hides it; a
  failing TensorFlow op still raises a Python exception.
"""

from __future__ import annotations

import os
import sys
import tempfile

SEVERITIES = "IWEF"  # absl's line prefixes (I1206 12:00:00...), by TF_CPP_MIN_LOG_LEVEL
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def shown(line: str, level: int) -> bool:
    """Whether a line TensorFlow wrote while loading passes TF_CPP_MIN_LOG_LEVEL=`level`: absl's
    lines by their severity, its preamble with its notices (level 0), any other line always."""
    if line.startswith(PREAMBLE):
        return level == 0
    if len(line) > 5 and line[0] in SEVERITIES and line[1:5].isdigit():
        return SEVERITIES.index(line[0]) >= level
    return True


def import_keras() -> None:
    """Import Keras once, and with it its backend, without TensorFlow's noise (a user's
    TF_CPP_MIN_LOG_LEVEL wins). Where IPython is installed but not running, Keras would import
    it (0.6 s a process here) for its file editor's notebook display; it is kept out of that
    import, and importable again afterwards. In a notebook IPython is loaded already, and Keras
    gets it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        return
    skipped = "IPython" not in sys.modules
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        if skipped:
            sys.modules["IPython"] = None  # an ImportError, which Keras expects
        try:
            import keras  # noqa: F401  (imports TensorFlow only on its backend)
        finally:
            if skipped:
                del sys.modules["IPython"]
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"]) \
                if os.environ["TF_CPP_MIN_LOG_LEVEL"].isdigit() else 0
            passed = [line for line in captured.read().decode(errors="replace").splitlines(True)
                      if shown(line, level)]
            sys.stderr.write("".join(passed))
