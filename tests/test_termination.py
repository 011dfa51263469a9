"""Stopping signals as exceptions, even where Python would ignore them."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from tlbench.tracking.termination import Terminated, terminate_as_exception


class SignalsInItsFinalizer:
    """Sends this process SIGTERM from `__del__`, where Python ignores what the handler raises."""

    def __del__(self):
        signal.raise_signal(signal.SIGTERM)


def test_a_sigterm_ignored_in_a_finalizer_is_raised_after_it():
    before = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    started = time.monotonic()
    with pytest.raises(Terminated) as caught, terminate_as_exception():
        SignalsInItsFinalizer()  # collected at once: its Terminated is raised and ignored there
        while time.monotonic() - started < 10:  # a run at work (a signal that comes just before
            time.sleep(0.01)  # a long sleep's system call waits for it to end, as in Python)
    assert caught.value.code == 128 + signal.SIGTERM and time.monotonic() - started < 5
    assert (signal.getsignal(signal.SIGTERM), sys.unraisablehook) == before
