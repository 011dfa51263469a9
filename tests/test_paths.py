"""File digests: hashed once per process and version of the file, never stale for a fresh one;
cache folders checked before a run writes to them."""

import hashlib
import os
import time

import pytest

from tlbench import paths
from tlbench.errors import TlbenchError
from tlbench.paths import RECENT_NS, sha256_of


def _write(path, data: bytes, mtime_ns: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_an_unchanged_file_is_hashed_once_and_a_new_version_again(tmp_path):
    path, old = tmp_path / "w.bin", time.time_ns() - 10 * RECENT_NS
    _write(path, b"a" * 1000, old)
    assert sha256_of(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    _write(path, b"b" * 1000, old)  # same size and time: the version the digest was kept for
    assert sha256_of(str(path)) == hashlib.sha256(b"a" * 1000).hexdigest()
    _write(path, b"b" * 1000, old + 1)
    assert sha256_of(path) == hashlib.sha256(b"b" * 1000).hexdigest()
    replaced = tmp_path / "new.bin"
    _write(replaced, b"c" * 1000, old + 1)
    replaced.replace(path)  # another inode at the same path, same size and time
    assert sha256_of(path) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_a_recently_modified_file_is_hashed_every_time(tmp_path):
    path, now = tmp_path / "w.bin", time.time_ns()
    _write(path, b"a" * 1000, now)
    assert sha256_of(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    _write(path, b"b" * 1000, now)  # rewritten within one timestamp tick
    assert sha256_of(path) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_writable_cache_is_created_and_an_unwritable_one_named_with_its_origin(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    assert paths.writable_cache("features", None, "cache.dir") == tmp_path / "cache" / "features"
    assert (tmp_path / "cache" / "features").is_dir()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "file"))
    with pytest.raises(TlbenchError) as error:
        paths.writable_cache("features", None, "cache.dir")
    assert str(error.value) == (
        f"the features cache {tmp_path / 'file' / 'features'} (from $TLBENCH_CACHE): cannot "
        "write there (Not a directory); set cache.dir or $TLBENCH_CACHE to a writable folder.")
