"""Stopping signals as exceptions: SIGTERM or SIGHUP (a scheduler's cancel, `kill`, a closed
terminal) inside a run raises Terminated, so the run ends KILLED and nothing logged is lost."""

from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
from collections.abc import Iterator


class Terminated(SystemExit):
    """SIGTERM (or SIGHUP) arrived during a run: it ends KILLED and the process exits 128+signal."""


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise Terminated (so the run can end KILLED) instead
    of ending the process on the spot; outside the main thread, signals are left alone.

    A signal that lands in a finalizer (`__del__`, a weakref callback) raises there, where Python
    ignores the exception: a thread then sends it to the main thread again, to be raised once the
    finalizer is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ignored: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # put() is safe in finalizers
    in_hook = False

    def handler(signum, _frame):
        if in_hook:  # raised here, it would be ignored too
            ignored.put(signum)
            return
        raise Terminated(128 + signum)

    def resend_if_ignored(unraisable) -> None:
        nonlocal in_hook
        in_hook = True
        try:
            if isinstance(unraisable.exc_value, Terminated):
                ignored.put(unraisable.exc_value.code - 128)
            else:
                previous_hook(unraisable)
        finally:
            in_hook = False

    def resend() -> None:
        while (signum := ignored.get()) is not None:
            signal.pthread_kill(threading.main_thread().ident, signum)  # wakes it from a wait

    previous = {number: signal.signal(number, handler)
                for number in (signal.SIGTERM, signal.SIGHUP)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, resend_if_ignored
    resender = threading.Thread(target=resend, name="resend-ignored-signals", daemon=True)
    resender.start()
    try:
        yield
    finally:
        ignored.put(None)
        try:
            resender.join()  # a signal sent again is raised here at the latest
        finally:
            sys.unraisablehook = previous_hook
            for number, old in previous.items():
                signal.signal(number, old)
