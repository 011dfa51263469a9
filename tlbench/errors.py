"""The one error type users see: a single actionable line, no traceback."""

from hydra.errors import CompactHydraException


class TlbenchError(CompactHydraException):
    """A user-facing error; Hydra prints only its message and exits non-zero."""


def last_line(exc: BaseException) -> str:
    """The exception's last message line (its type name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
