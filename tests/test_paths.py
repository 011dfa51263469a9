"""File digests: hashed once per process and version of the file, never stale for a fresh one."""

import hashlib
import os
import time

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
