"""The one error type users see, and the one-line checks that raise it (no Hydra import here)."""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Iterable

SEED_LIMIT = 2**31  # seeds below it suit NumPy, Python, TensorFlow, JAX and PyTorch alike


class TlbenchError(Exception):
    """A user-facing error: one actionable line; the entry points print it and exit non-zero.

    `metrics` are the measurements that led to it, logged with the failed run."""

    def __init__(self, message: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics or {}


def last_line(exc: BaseException) -> str:
    """The exception's last message line (its type name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """An exception's message with its whitespace (newlines, tabs) collapsed."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise a one-line error naming the key, the bad value and what is valid."""
    if not ok:
        raise TlbenchError(f"{key}={value!r} is invalid: expected {expected}.")


def check_seed(key: str, value: object) -> None:
    """Raise unless value is a seed every backend accepts: a whole number in [0, SEED_LIMIT)."""
    check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT,
          key, value, f"a whole number from 0 to {SEED_LIMIT - 1}")


def check_choice(key: str, value: object, choices: Iterable[str]) -> None:
    """Raise unless value is one of choices, listing them."""
    choices = sorted(choices)
    check(value in choices, key, value, "one of " + ", ".join(choices))


def whole_number(low: int, high: int | None = None):
    """An argparse type for a command's option: a whole number from `low` (to `high`), else
    a usage error saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise ArgumentTypeError(
                f"{text!r} is not a whole number "
                + (f"from {low} to {high}" if high is not None else f"of {low} or more"))
        return value

    return parse
