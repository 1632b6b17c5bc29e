"""Exact categorical draws in float64 by inverse CDF (docs/math.md section 5).

At the bottom of the package: the sampler (`ddm.sampling`) and the autoregressive baseline
(`ddm.model.autoregressive`) both draw with it.

A float32 Gumbel-max draw truncates the tails of the distribution and lowers the effective temperature
(Zheng et al. 2024, arXiv 2409.02908); inverting the float64 cumulative distribution with one float64
uniform per row has a bias of order 2^-53 per category, far below anything a test can see.
"""

from __future__ import annotations

import torch

__all__ = ["inverse_cdf", "sample_categorical"]


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one category per row of `probs` by inverting its float64 cumulative distribution.

    Rows need not be normalised; they must be non-negative with a positive, finite sum. A category of zero
    probability is never returned.

    Args:
        probs: `[..., K]` non-negative weights (any floating dtype; the draw runs in float64).
        generator: torch random generator on the device of `probs`.

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
    u = torch.rand(total.shape, dtype=torch.float64, device=p.device, generator=generator)  # (..., 1)
    # the first index whose cumulative mass exceeds u * total; zero-mass categories are skipped because
    # their cdf equals their predecessor's
    idx = torch.searchsorted(cdf.contiguous(), (u * total).contiguous(), right=True).squeeze(-1)
    # u * total can round up to total itself; fall back to the last category with positive mass
    last = p.shape[-1] - 1 - torch.argmax((p.flip(-1) > 0).to(torch.int8), dim=-1)
    return torch.minimum(idx, last)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one category per row of `probs` by inverting the float64 CDF at the uniforms `u`.

    Negative entries (a too-large step) are clipped at 0 and the rest renormalised (docs/math.md
    section 5); a state
    with probability 0 is never returned.

    Args:
        probs: unnormalised non-negative weights, `[..., dim]` (computed in float64).
        u: uniforms in `[0, 1)`, `[...]`.

    Returns:
        int64 indices, `[...]`.
    """
    p = probs.to(torch.float64).clamp_min(0.0)  # (..., dim)
    cdf = torch.cumsum(p, dim=-1)  # (..., dim)
    v = u.to(torch.float64)[..., None] * cdf[..., -1:]  # (..., 1)
    idx = torch.searchsorted(cdf, v, right=True).squeeze(-1)  # first index with cdf > v
    # u * total can round up to total: fall back to the last state with positive weight
    ar = torch.arange(p.shape[-1], device=p.device)
    last = torch.where(p > 0, ar, torch.zeros_like(ar)).amax(dim=-1)
    return torch.minimum(idx, last)
