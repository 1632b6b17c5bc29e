"""ddm: score-entropy discrete diffusion (SEDD) with a fast Rust CTMC core."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
