"""The one error type users see: a single actionable line, no traceback."""

from hydra.errors import CompactHydraException


class TlbenchError(CompactHydraException):
    """A user-facing error; Hydra prints only its message and exits non-zero."""
