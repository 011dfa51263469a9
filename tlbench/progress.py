"""Progress lines for long work (cache fills): count, rate and time left, every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np

log = logging.getLogger("tlbench")

EVERY_SECONDS = 5.0
"""Seconds between two progress lines; work that ends sooner prints none."""


def duration(seconds: float) -> str:
    """A short duration: '42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def reported(chunks: Iterable[tuple[np.ndarray, np.ndarray]], total: int, what: str,
             unit: str = "images") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (positions, rows) chunks as they come, with a line every EVERY_SECONDS saying how
    many of `total` are done, at what rate, and the time left."""
    start = last = time.perf_counter()
    done = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk[0])
        now = time.perf_counter()
        if now - last >= EVERY_SECONDS and done < total:
            rate = done / (now - start)
            log.info("%s: %d/%d %s (%.0f/s, %s left)", what, done, total, unit, rate,
                     duration((total - done) / rate))
            last = now
