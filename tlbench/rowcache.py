"""Row caches on disk: n rows of one shape, computed once, served a batch at a time.

Both caches keep their rows this way: decoded images (uint8, `tlbench.data.decoded`) and a frozen
base's outputs (float32 or float16, `tlbench.frozen.cache`). An entry is a folder holding `rows.npy`
(a plain .npy file: `np.load(path, mmap_mode="r")` reads it), `done.npy` (which rows are
computed) and `key.json` (what determines them). A file lock per entry makes concurrent workers
compute a row once; rows are marked done (atomically) only after they are written, so a killed
worker leaves nothing half-written behind, and a long fill marks its progress every
CHECKPOINT_SECONDS so that a killed fill resumes where it stopped.

How the rows reach the disk without a fill waiting for it: `tlbench.rowsync`.

Rows are read and written with positioned I/O (pread/pwrite), not through a memory map: the
pages stay in the kernel's page cache instead of the process's resident memory (a map counts
every page it touched, so an epoch over a large dataset would grow the RSS by the dataset's
size), and a full disk raises OSError where a written map would crash the process.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from tlbench.errors import TlbenchError
from tlbench.rowsync import (
    SYNCS,
    Flusher,
    atomic_save,
    boot_id,
    lost_in_a_restart,
    read_key,
    sync_then_unmark,
    unsynced_mark,
    write_key,
)

log = logging.getLogger("tlbench")

CHECKPOINT_SECONDS = 30.0
"""A fill longer than this syncs its rows and saves its done mask this often."""


class RowFile:
    """An .npy file of `n_rows` rows of `row_shape` and `dtype`, read and written by position."""

    def __init__(self, path: Path, offset: int, n_rows: int, row_shape: tuple[int, ...],
                 dtype: np.dtype) -> None:
        self.path, self.offset, self.n_rows = path, offset, n_rows
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.folder_owner: object = None
        """What removes the file's folder when it is garbage (a scratch folder), kept alive
        as long as the file is."""

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))

    @classmethod
    def create(cls, path: Path, n_rows: int, row_shape: tuple[int, ...],
               dtype: np.dtype) -> RowFile:
        """A new, sparse file for n_rows rows (disk blocks are taken only as rows are written)."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": (n_rows, *row_shape)}
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            offset = handle.tell()
        rows = cls(path, offset, n_rows, row_shape, dtype)
        os.truncate(path, offset + n_rows * rows.row_bytes)
        return rows

    @classmethod
    def open(cls, path: Path, n_rows: int) -> RowFile | None:
        """The file's layout if it holds n_rows C-ordered rows and is as long as its header says;
        None when missing, unreadable, truncated (an interrupted copy) or other."""
        readers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        try:
            with open(path, "rb") as handle:
                shape, fortran, dtype = readers[np.lib.format.read_magic(handle)](handle)
                offset = handle.tell()
            size = path.stat().st_size
        except (OSError, ValueError, EOFError, KeyError):
            return None
        if fortran or not shape or shape[0] != n_rows or dtype.hasobject:
            return None
        rows = cls(path, offset, n_rows, tuple(shape[1:]), dtype)
        return rows if size == offset + n_rows * rows.row_bytes else None

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The rows at `positions`, in their order (runs of consecutive rows in one read)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.row_shape), self.dtype)
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as handle:
            for start, stop in _runs(positions):
                _transfer(os.preadv, handle.fileno(),
                          buffer[start * self.row_bytes:stop * self.row_bytes],
                          self.offset + int(positions[start]) * self.row_bytes, self.path)
        return out

    def write(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write rows in place (runs of consecutive positions in one write); not synced."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        buffer = memoryview(rows.reshape(-1).view(np.uint8))
        with open(self.path, "r+b", buffering=0) as handle:
            for start, stop in _runs(positions):
                _transfer(os.pwritev, handle.fileno(),
                          buffer[start * self.row_bytes:stop * self.row_bytes],
                          self.offset + int(positions[start]) * self.row_bytes, self.path)

    def sync(self) -> None:
        """Flush the written rows to disk."""
        with open(self.path, "r+b", buffering=0) as handle:
            os.fsync(handle.fileno())


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index ranges of `positions` whose values go up by one."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return list(zip([0, *breaks.tolist()], [*breaks.tolist(), len(positions)], strict=True))


def _transfer(call, fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    """pread or pwrite the whole buffer at offset (the kernel may move fewer bytes per call)."""
    while len(buffer):
        moved = call(fd, [buffer], offset)
        if moved <= 0:
            raise OSError(f"{path}: short {call.__name__} at byte {offset}")
        buffer, offset = buffer[moved:], offset + moved


@dataclass(frozen=True)
class Rows:
    """The rows of a store (a RowFile, or an array in memory) at `positions`: a split's images,
    features or activations, read a batch at a time. float16 rows are served as float32."""

    store: RowFile | np.ndarray
    positions: np.ndarray

    @classmethod
    def of(cls, array: np.ndarray) -> Rows:
        """Every row of an array in memory."""
        return cls(array, np.arange(len(array)))

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row."""
        store = self.store
        return store.row_shape if isinstance(store, RowFile) else tuple(store.shape[1:])

    @property
    def shape(self) -> tuple[int, ...]:
        """(rows, *row shape), as an array's."""
        return (len(self), *self.row_shape)

    @property
    def dtype(self) -> np.dtype:
        """The dtype rows are served in (float16 stores are served as float32)."""
        return np.dtype(np.float32) if self.store.dtype == np.float16 else np.dtype(
            self.store.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of every row as served."""
        return len(self) * self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))

    def read(self, index) -> np.ndarray:
        """The rows at `index` (an index array or slice into these rows)."""
        positions = self.positions[index]
        rows = self.store.read(positions) if isinstance(self.store, RowFile) else \
            self.store[positions]
        return rows.astype(self.dtype, copy=False)

    def load(self) -> np.ndarray:
        """Every row in memory: for small rows only (pooled features for a probe or a score)."""
        return self.read(slice(None))

    def same_as(self, other: Rows) -> bool:
        """Whether `other` serves the same rows: the same positions of the same file (whose
        computed rows never change) or of an equal array."""
        mine, theirs = self.store, other.store
        if isinstance(mine, RowFile) != isinstance(theirs, RowFile):
            return False
        same_store = (mine.path == theirs.path and mine.dtype == theirs.dtype
                      and mine.row_shape == theirs.row_shape) if isinstance(mine, RowFile) else \
            mine is theirs or (mine.shape == theirs.shape and mine.dtype == theirs.dtype
                               and np.array_equal(mine, theirs))
        return same_store and np.array_equal(self.positions, other.positions)


Compute = Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray]]]
"""Computes the rows at some positions, as (positions, rows) chunks in any order."""


def cached_rows(folder: Path, key: dict, positions: np.ndarray, n_rows: int, compute: Compute,
                fill: np.ndarray | None = None, dtype=np.float32,
                what: str = "cache", durable: bool = True) -> tuple[RowFile, int, float]:
    """The entry's row file with every row at `positions` computed, computing only those not
    cached yet (and, on a miss, those of `fill` too), a chunk at a time. Returns the file, how
    many rows were computed, and the seconds spent waiting for another worker's lock. A
    truncated entry, or one whose rows have another shape or dtype, is rebuilt, rows and mask
    together; a failed write (a full disk) raises TlbenchError and leaves the entry consistent.
    A scratch entry (`durable` false: removed when the run ends) is never synced."""
    folder.mkdir(parents=True, exist_ok=True)
    waited = time.perf_counter()
    with FileLock(str(folder) + ".lock"):
        waited = time.perf_counter() - waited
        done, rows = _entry_state(folder, n_rows, dtype)
        missing = positions[~done[positions]]
        if len(missing) and fill is not None:
            missing = np.union1d(missing, fill[~done[fill]])
        computed = 0
        if len(missing):
            try:
                rows, computed = _fill(folder, key, rows, done, missing, compute, dtype, what,
                                       durable)
            except OSError as exc:
                raise TlbenchError(
                    f"{what} {folder}: cannot write ({exc.strerror or exc}); free space there, "
                    "or point the cache at another folder (cache.dir or "
                    "$TLBENCH_CACHE)") from None
        assert done[positions].all(), "a cached row was about to be served uncomputed"
        return rows, computed, waited


def _entry_state(folder: Path, n_rows: int, dtype) -> tuple[np.ndarray, RowFile | None]:
    """The done mask and the row file when the rows are whole and of the dtype and row shape
    that key.json records; else an empty mask (the entry is rebuilt, rows and mask together),
    so a row is served only if it was computed."""
    rows = RowFile.open(folder / "rows.npy", n_rows)
    done = np.zeros(n_rows, dtype=bool)
    try:
        saved = np.load(folder / "done.npy")
    except (OSError, ValueError, EOFError):
        return done, None
    key = read_key(folder)
    recorded = key.get("row_shape")
    if recorded is None:
        log.info("cache %s: written by an older tlbench; rebuilding it once", folder)
        return done, None
    if lost_in_a_restart(key):
        log.warning("cache %s: its rows were not yet on disk when this machine restarted; "
                    "rebuilding the entry", folder)
        return done, None
    if rows is None or tuple(recorded) != rows.row_shape or rows.dtype != np.dtype(dtype) \
            or saved.shape != done.shape or saved.dtype != bool:
        if saved.any():
            log.warning("cache %s: rows and mask disagree (an interrupted copy?); rebuilding "
                        "the entry", folder)
        return done, None
    return saved, rows


def _fill(folder: Path, key: dict, rows: RowFile | None, done: np.ndarray, missing: np.ndarray,
          compute: Compute, dtype, what: str, durable: bool) -> tuple[RowFile, int]:
    """Compute the missing rows chunk by chunk into the entry, marking them done once written
    (synced in the background); an entry whose done rows have another shape is rebuilt, those
    rows computed anew."""
    started = last_mark = time.perf_counter()
    computed = 0
    if rows is not None:
        check_free_space(folder, len(missing) * rows.row_bytes, what)
    flusher = Flusher(durable and boot_id() is None)
    for chunk, values in compute(missing):
        if rows is None or rows.row_shape != values.shape[1:]:
            if rows is not None and done.any():
                log.warning("%s %s: rows of another shape; rebuilding", what, folder)
                return _fill(folder, key, None, np.zeros_like(done),
                             np.union1d(missing, np.flatnonzero(done)), compute, dtype, what,
                             durable)
            (folder / "done.npy").unlink(missing_ok=True)  # never a mask without its rows
            rows = RowFile.create(folder / "rows.npy", len(done), values.shape[1:], dtype)
            check_free_space(folder, len(missing) * rows.row_bytes, what)
        rows.write(chunk, values)
        flusher.wrote(rows, len(chunk) * rows.row_bytes)
        done[chunk] = True
        computed += len(chunk)
        if time.perf_counter() - last_mark > CHECKPOINT_SECONDS:
            _mark_done(folder, key, rows, done, started, computed, flusher.pending, durable)
            last_mark = time.perf_counter()
    if not done[missing].all():
        raise RuntimeError(f"{what} {folder}: the computation skipped rows it was asked for")
    mark = _mark_done(folder, key, rows, done, started, computed, flusher.pending, durable)
    if mark is not None:
        SYNCS.submit(sync_then_unmark, folder, rows, mark, what, flusher.pending)
    return rows, computed


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse a fill that cannot fit in its folder's free space, with both numbers."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise TlbenchError(f"{what} {folder}: this fill needs {needed / 2**30:.2f} GiB but the "
                           f"disk has {free / 2**30:.2f} GiB free; free space there, or point "
                           "the cache at another disk (cache.dir for frozen outputs, "
                           "$TLBENCH_CACHE for every cache)")


def _mark_done(folder: Path, key: dict, rows: RowFile, done: np.ndarray, started: float,
               computed: int, earlier: Future | None, durable: bool) -> dict | None:
    """Record the key (with the row shape, seconds per row and, where the rows are not synced
    yet, the `unsynced` mark) and save the done mask atomically. Returns the mark, or None where
    the rows were synced first (no boot id; `earlier`, a background sync, must have succeeded)
    or need no sync (a scratch entry)."""
    mark = unsynced_mark() if durable else None
    if durable and mark is None:
        if earlier is not None:
            earlier.result()
        rows.sync()
    rate = (time.perf_counter() - started) / max(computed, 1)
    recorded = key | {"row_shape": list(rows.row_shape), "seconds_per_row": rate}
    write_key(folder, recorded | ({"unsynced": mark} if mark else {}))
    atomic_save(folder / "done.npy", done)
    return mark


def seconds_per_row(folder: Path) -> float:
    """What computing one row of an entry took when it was filled (0 if not recorded)."""
    try:
        return float(read_key(folder).get("seconds_per_row", 0.0))
    except (TypeError, ValueError):
        return 0.0


def done_mask(folder: Path, n_rows: int, dtype) -> np.ndarray:
    """Which of the entry's rows are computed (read without its lock: a hint)."""
    if not (folder / "done.npy").is_file():
        return np.zeros(n_rows, dtype=bool)
    return _entry_state(folder, n_rows, dtype)[0]


def covers(folder: Path, positions: np.ndarray, n_rows: int, dtype) -> bool:
    """Whether the entry holds every row at `positions` (read without its lock: a hint)."""
    return bool(done_mask(folder, n_rows, dtype)[positions].all())
