"""Small statistics helpers: the plug-in entropy of token counts (the one formula behind every unigram
entropy), and how a standard error that may be missing is shown."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["error_bar", "format_stderr", "plugin_entropy"]


def plugin_entropy(counts: Any) -> torch.Tensor:
    """`H = -sum_v p_v ln p_v` with `p_v = n_v / sum_v n_v`, in nats, over the last axis (`0 ln 0 = 0`).

    Args:
        counts: non-negative counts `[..., V]` (a tensor or an array; computed in float64).

    Returns:
        float64 `[...]`.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    p = n / n.sum(dim=-1, keepdim=True)  # (..., V)
    return -torch.special.xlogy(p, p).sum(dim=-1)


def format_stderr(stderr: float | None, digits: int = 4) -> str:
    """A standard error for a table or a log line: `"n/a"` when it is unknown (a bound over one chunk has
    no spread to estimate it from), else the figure with `digits` decimals."""
    return "n/a" if stderr is None else f"{stderr:.{digits}f}"


def error_bar(stderr: float | None, width: float = 2.0) -> float:
    """The half-height of a plotted error bar, `width` standard errors; 0 (no bar) when it is unknown."""
    return 0.0 if stderr is None else width * stderr
