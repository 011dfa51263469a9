"""Where tlbench and Keras keep their caches, each resolved in one place."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path

from tlbench.errors import TlbenchError


def cache_dir(kind: str, configured: str | None = None) -> Path:
    """`configured` if set, else $TLBENCH_CACHE/<kind>, else ~/.cache/tlbench/<kind>."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("TLBENCH_CACHE") or "~/.cache/tlbench").expanduser() / kind


def writable_cache(kind: str, configured: str | None, key: str) -> Path:
    """`cache_dir(kind, configured)`, created if missing; one line naming `key` (or
    $TLBENCH_CACHE) where it cannot be written, before a run spends anything on it."""
    folder = cache_dir(kind, configured)
    reason = unwritable(folder)
    if reason:
        origin = f"{key}={configured}" if configured else (
            f"the {kind} cache {folder} (from $TLBENCH_CACHE)" if os.environ.get("TLBENCH_CACHE")
            else f"the {kind} cache {folder} (the default)")
        raise TlbenchError(f"{origin}: cannot write there ({reason}); set {key} or "
                           "$TLBENCH_CACHE to a writable folder.")
    return folder


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created or written to (it is created if missing); None if it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # a real write: root passes os.access
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


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


RECENT_NS = 2 * 10**9
"""A file modified this recently is hashed on every call: a rewrite within the same timestamp
tick (a few ms) could keep its size and modification time."""


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks once per process and version of the file (device,
    inode, size, modification time): every run of a sweep checks its weights and data files,
    and a 100 MB file takes 0.08 s to hash here."""
    stat = os.stat(path)
    if time.time_ns() - stat.st_mtime_ns < RECENT_NS:
        return _sha256(path)
    return _sha256_of_version(os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size,
                              stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of_version(path: str, *version: int) -> str:
    """sha256_of, computed once per `version` (the cache key only)."""
    return _sha256(path)


def _sha256(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


DOWNLOAD_TIMEOUT_SECONDS = 30


@contextlib.contextmanager
def download_timeout():
    """Bound every blocking socket operation to DOWNLOAD_TIMEOUT_SECONDS (Keras downloads with
    urlretrieve, no timeout): a stalled download fails with one line instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
