"""Exact categorical draws in float64 by inverse CDF: the one draw of the torch paths (docs/math.md sec. 5).

At the bottom of the package: the sampler (`ddm.sampling`) and the autoregressive baseline
(`ddm.model.autoregressive`) both draw with it.

A float32 Gumbel-max draw truncates the tails of the distribution and lowers the effective temperature
(Zheng et al. 2024, arXiv 2409.02908); inverting the float64 cumulative distribution with one float64
uniform per row has a bias of order 2^-53 per category, far below anything a test can see.
"""

from __future__ import annotations

import torch

__all__ = ["inverse_cdf", "sample_categorical"]


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one category per row of `probs` by inverting its float64 cumulative distribution at `u`.

    Rows need not be normalised; they must be non-negative with a positive, finite sum (a row with NaN,
    inf, a negative entry or no mass at all is refused with a ValueError). A category of zero probability
    is never returned.

    Args:
        probs: `[..., K]` non-negative weights (any floating dtype; the draw runs in float64).
        u: uniforms in `[0, 1)`, `[...]`.

    Returns:
        int64 tensor of shape `[...]` with values in `[0, K)`.
    """
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise TypeError("probs must be a floating torch.Tensor")
    if probs.dim() == 0 or probs.shape[-1] == 0:
        raise ValueError(f"probs must have a non-empty last dimension, got shape {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64)
    cdf = torch.cumsum(p, dim=-1)  # (..., K)
    total = cdf[..., -1:]  # (..., 1)
    if p.numel() > 0 and not bool(
        torch.all(torch.isfinite(total) & (total > 0) & (p.min(dim=-1).values >= 0)[..., None])
    ):
        raise ValueError(
            "every row of probs must be non-negative with a positive, finite sum (NaN, inf or all-zero row)"
        )
    v = u.to(device=p.device, dtype=torch.float64)[..., None] * total  # (..., 1)
    # the first index whose cumulative mass exceeds u * total; zero-mass categories are skipped because
    # their cdf equals their predecessor's
    idx = torch.searchsorted(cdf.contiguous(), v.contiguous(), right=True).squeeze(-1)
    # u * total can round up to total itself; fall back to the last category with positive mass
    last = p.shape[-1] - 1 - torch.argmax((p.flip(-1) > 0).to(torch.int8), dim=-1)
    return torch.minimum(idx, last)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`inverse_cdf` at float64 uniforms from `generator` (one per row), `[...]` int64."""
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise TypeError("probs must be a floating torch.Tensor")
    u = torch.rand(probs.shape[:-1], dtype=torch.float64, device=probs.device, generator=generator)
    return inverse_cdf(probs, u)
