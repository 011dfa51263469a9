"""Where tlbench and Keras keep their caches, each resolved in one place."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str, configured: str | None = None) -> Path:
    """`configured` if set, else $TLBENCH_CACHE/<kind>, else ~/.cache/tlbench/<kind>."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("TLBENCH_CACHE") or "~/.cache/tlbench").expanduser() / kind


def keras_home() -> Path:
    """Keras' cache folder ($KERAS_HOME, else ~/.keras; /tmp/.keras where those are not
    writable), resolved as Keras resolves it, without importing Keras."""
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return Path(home)
