"""Progress lines for long work: cache fills (count, rate and time left, every few seconds) and
epochs of a long fit (one line each, with the time left)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np

log = logging.getLogger("tlbench")

EVERY_SECONDS = 5.0
"""Seconds between two progress lines; work that ends sooner prints none."""


def duration(seconds: float) -> str:
    """Seconds as 1h02m, 4m10s or 12s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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


def epoch_line(what: str, epochs: int, seconds: list[float], logs: dict) -> str:
    """`pretraining ...: epoch 3/15 loss 0.3138 val_accuracy 0.2000 (4.0s); ETA 48s` for the
    epoch that took seconds[-1]: the time left is the mean of the epochs after the first for each
    epoch still to run. The first also traces the model (a minute on 2 cores against seconds),
    so its line gives no ETA."""
    epoch = len(seconds)
    scores = " ".join(f"{key} {logs[key]:.4f}" for key in ("loss", "val_accuracy") if key in logs)
    if epoch == 1:
        return f"{what}: epoch 1/{epochs} {scores} ({seconds[0]:.1f}s, tracing included)"
    steady = sum(seconds[1:]) / (epoch - 1)
    eta = f"; ETA {duration(steady * (epochs - epoch))}" if epoch < epochs else ""
    return f"{what}: epoch {epoch}/{epochs} {scores} ({seconds[-1]:.1f}s){eta}"
