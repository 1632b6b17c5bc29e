"""Fault injection for tests: `DDM_FAULT="RANK:STEP[:POINT]"` makes process RANK exit with status 1.

POINT is `step` (before computing step STEP + 1; the default) or `save` (inside the save of step STEP,
after the files are written and before the rename). The hook sits at the bottom of the package because
both the training loop and the checkpoint writer call it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["maybe_fail"]


def _fault() -> tuple[int, int, str] | None:
    spec = os.environ.get("DDM_FAULT")
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"DDM_FAULT must be 'RANK:STEP' or 'RANK:STEP:POINT', got {spec!r}")
    return int(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else "step"


def _rank() -> int:
    value = os.environ.get("RANK") or "0"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable RANK={value!r} is not an integer") from None


def maybe_fail(point: str, step: int) -> None:
    """Test hook: exits this process with status 1 where `DDM_FAULT` says (see the module docstring)."""
    fault = _fault()
    if fault is None:
        return
    rank = _rank()
    if fault == (rank, step, point):
        sys.stderr.write(f"ddm: DDM_FAULT: rank {rank} exits at {point} of step {step}\n")
        sys.stderr.flush()
        os._exit(1)
