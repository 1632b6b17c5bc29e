"""The one family of ddm's exceptions.

Every error that ddm raises on purpose derives from `DdmError`, so a caller can catch all of them with one
`except ddm.DdmError`, and the command line turns each into one `ddm <cmd>: error: ...` line. Each subclass
also derives from the built-in exception that Python code would expect for the same fault (`ValueError`,
`TypeError`, `OSError`, ...), so `except ValueError` keeps working.

Bad input is reported the same way whichever backend (torch or the Rust core) runs a step: an argument of
the wrong type or dtype and an argument of the wrong value both raise `InvalidArgument`, which is a
`ValueError` and a `TypeError` at once (numpy's `AxisError` is the model: one fault, two expectations).

Where a new error goes: a subclass here, next to the family it belongs to; the message names the argument
or the file, the value, and what to do.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CheckpointError",
    "DataError",
    "DdmError",
    "DivergenceError",
    "InvalidArgument",
]


class DdmError(Exception):
    """The root of every exception that ddm raises on purpose."""


class InvalidArgument(DdmError, ValueError, TypeError):
    """An argument of the wrong type, dtype, shape or value (the message names it and the value)."""


class BackendError(DdmError, ValueError):
    """The chosen backend cannot run this (for example a graph the Rust core has no kernel for)."""


class CheckpointError(DdmError, ValueError):
    """A checkpoint or model directory that is missing, damaged or of an unknown layout (names the file)."""


class DataError(DdmError, ValueError):
    """A data file that cannot be read as the format it claims (names the file and the byte offset)."""


class DivergenceError(DdmError, FloatingPointError):
    """Training produced a non-finite loss or weights (names the step and what to try)."""
