"""The plug-in (empirical) entropy of token counts: the one formula behind every unigram entropy."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["plugin_entropy"]


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
