"""How a row cache entry's files reach the disk (`tlbench.rowcache`): its key and mask written
atomically, its rows synced in the background, and the marks that tell rows lost in a restart.

Written rows outlive a killed process in the kernel's page cache, but not a crash of the machine
before they reach the disk. So a fill does not wait for the disk: where the machine names its
boot (Linux), the mask is saved at once with an `unsynced` mark (host and boot id) in key.json,
a background thread syncs the rows and then removes the mark (the process waits for it at
exit), and an entry still marked by an earlier boot of this host is rebuilt. Elsewhere the rows
are synced before they are marked done. Scratch entries (removed when their run ends) are never
synced.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

if TYPE_CHECKING:
    from tlbench.rowcache import RowFile

log = logging.getLogger("tlbench")


FLUSH_BYTES = 64 * 2**20
"""A fill hands the disk its rows every this many bytes, while it computes the next ones."""


class Flusher:
    """Syncs a row file in the background as a fill writes it (every FLUSH_BYTES), where the
    rows are synced before they are marked done (no boot id): the disk then writes while rows
    are computed, and the final sync waits for little; a failed sync raises at the next one or
    when the rows are marked done. Elsewhere (`enabled` false) it does nothing: the rows are
    synced after the fill, and syncing during it halved a fill's rate on this project's disk."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.pending: Future | None = None
        self.unflushed = 0

    def wrote(self, rows: RowFile, nbytes: int) -> None:
        """Count written bytes; start a sync once FLUSH_BYTES wait and none is running."""
        self.unflushed += nbytes
        if self.enabled and self.unflushed >= FLUSH_BYTES and (
                self.pending is None or self.pending.done()):
            if self.pending is not None:
                self.pending.result()  # a failed sync (a full disk) raises here
            self.pending, self.unflushed = SYNCS.submit(rows.sync), 0


SYNCS = ThreadPoolExecutor(1, thread_name_prefix="tlbench-sync")
"""Syncs filled entries in the background; its thread is joined at interpreter exit."""


def sync_then_unmark(folder: Path, rows: RowFile, mark: dict, what: str,
                      earlier: Future | None) -> None:
    """Sync the rows, then remove the entry's `unsynced` mark if it is still this fill's; if
    this sync or an `earlier` one of the fill failed, drop the done mask so the entry is
    rebuilt."""
    try:
        if earlier is not None:
            earlier.result()
        rows.sync()
    except OSError as exc:
        log.warning("%s %s: the rows could not be written to disk (%s); the entry will be "
                    "rebuilt", what, folder, exc.strerror or exc)
        with FileLock(str(folder) + ".lock"):
            (folder / "done.npy").unlink(missing_ok=True)
        return
    with FileLock(str(folder) + ".lock"):
        recorded = read_key(folder)
        if recorded.get("unsynced") == mark and folder.is_dir():
            del recorded["unsynced"]
            write_key(folder, recorded)


def wait_for_syncs() -> None:
    """Block until every background sync submitted so far has finished."""
    SYNCS.submit(lambda: None).result()


def boot_id() -> str | None:
    """The running kernel's boot id (changes at every restart); None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def unsynced_mark() -> dict | None:
    """What marks rows written but not yet synced: this host, its boot and a fill id; None
    where the boot cannot be named (the rows are then synced before they are marked done)."""
    boot = boot_id()
    return None if boot is None else {"host": socket.gethostname(), "boot_id": boot,
                                      "fill": uuid.uuid4().hex}


def lost_in_a_restart(key: dict) -> bool:
    """Whether an entry's rows (its key.json as read) were marked done on this host in an
    earlier boot and never synced (a crash of the machine may have lost them). Another host's
    mark is trusted: its writes reached the shared file system when its file was closed."""
    mark = key.get("unsynced")
    return isinstance(mark, dict) and mark.get("host") == socket.gethostname() and \
        mark.get("boot_id") != boot_id()


def read_key(folder: Path) -> dict:
    """The entry's key.json ({} when missing or unreadable)."""
    try:
        recorded = json.loads((folder / "key.json").read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def write_key(folder: Path, recorded: dict) -> None:
    """Write key.json through a synced temporary file and os.replace."""
    temporary = folder / f"tmp-{os.getpid()}-key.json"
    try:
        with open(temporary, "w") as handle:
            handle.write(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, folder / "key.json")
    finally:
        temporary.unlink(missing_ok=True)


def atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save through a synced temporary file and os.replace: readers see the old or the new
    file, and a failed write (a full disk) leaves the old one and no temporary behind."""
    temporary = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
