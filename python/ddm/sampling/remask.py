"""Remasking for the absorbing graph: the ReMDM sampler (Wang et al. 2025, arXiv 2503.00307; math.md 10).

On the grid `t_k = linspace(1, eps, steps + 1)`, with `alpha = e^{-sigma_bar}`, `a_t = alpha(t_k)` and
`a_s = alpha(t_{k+1})`, each step moves every free position independently given the model's conditional
`x_theta = softmax(l_{0..N-1})` (with the proposal transform):

- a real token is masked again with probability `r_k`;
- a MASK unmasks with probability `(a_s - (1 - r_k) a_t) / (1 - a_t)`, to `y ~ x_theta`.

With `r_k = 0` this is the MDLM ancestral step, whose unmasking probability `(a_s - a_t) / (1 - a_t)`
equals the analytic step's `expm1(d) / expm1(sigma_bar(t_k))` under exact scores. Any `r_k` in
`[0, r_max]`, `r_max = min(1, (1 - a_s) / a_t)`, keeps the forward marginal of every position given
`x0` (ReMDM's posterior), so a committed token can be masked again and redrawn later, letting the sampler
correct itself when given more steps. Schedules (`remask_schedule`): `"cap"` `r_k = min(eta, r_max)`
(ReMDM-cap) and `"rescale"` `r_k = eta r_max` (ReMDM-rescale), with `eta = remask`. With `denoise=True` a
last call at `t = eps` unmasks whatever is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddm.sampling import _rng
from ddm.sampling.first_hitting import draw_masked

__all__ = ["REMASK_SCHEDULES", "check_remask", "remask_rates", "remdm"]

REMASK_SCHEDULES = ("cap", "rescale")
STREAM_UNMASK = 0x5EED0017
STREAM_REMASK = 0x5EED0018


def check_remask(remask: Any, schedule: Any) -> float:
    """Check `remask` (eta in [0, 1]) and `remask_schedule`; returns eta as a float."""
    if isinstance(remask, bool) or not isinstance(remask, (int, float)):
        raise TypeError(f"remask must be a float in [0, 1] or None, got {type(remask).__name__}")
    if not 0.0 <= float(remask) <= 1.0:
        raise ValueError(f"remask must lie in [0, 1], got {remask}")
    if schedule not in REMASK_SCHEDULES:
        raise ValueError(f"remask_schedule must be one of {REMASK_SCHEDULES}, got {schedule!r}")
    return float(remask)


def remask_rates(sigma_bar: torch.Tensor, eta: float, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step `k`: the remasking probability `r_k` and the unmasking probability of a MASK.

    Args:
        sigma_bar: float64 `[steps + 1]`, `sigma_bar(t_k)` on the grid (decreasing).
        eta: the remasking strength in `[0, 1]`.
        kind: `"cap"` or `"rescale"`.

    Returns:
        `(r, unmask)`, float64 `[steps]` each.
    """
    a = torch.exp(-sigma_bar.to(torch.float64))
    a_t, a_s = a[:-1], a[1:]
    one_minus_a_s = -torch.expm1(-sigma_bar[1:].to(torch.float64))
    r_max = (one_minus_a_s / a_t).clamp(max=1.0)
    r = torch.minimum(torch.full_like(r_max, eta), r_max) if kind == "cap" else eta * r_max
    one_minus_a_t = -torch.expm1(-sigma_bar[:-1].to(torch.float64))
    unmask = ((a_s - (1 - r) * a_t) / one_minus_a_t).clamp(0.0, 1.0)
    return r, unmask


def remdm(
    call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: Any,
    x: torch.Tensor,
    free: torch.Tensor,
    *,
    seed: int,
    eta: float,
    kind: str,
    use_rust: bool,
    on_call: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run ReMDM from `x` (MASK at the free positions) on `sampler`'s grid (`set_timesteps` called).

    Returns:
        int64 `[B, L]`; without MASK when `sampler.denoise`.
    """
    graph = sampler.graph
    mask_id = graph.dim - 1
    batch, length = x.shape
    device = x.device
    rows = torch.arange(batch, dtype=torch.int64, device=device)
    free_b = free.to(device)[None, :].expand(batch, length)  # (B, L)
    steps = sampler.num_inference_steps
    r, unmask = remask_rates(sampler._sigma_bar, eta, kind)  # (steps,) each
    for k in range(steps):
        sigma = sampler.noise_level(k, batch, device=device)  # (B,)
        log_score = call(x, sigma)
        if on_call is not None:
            on_call(batch)
        masked = (x == mask_id) & free_b
        committed = (x != mask_id) & free_b
        u = _rng.uniforms(seed, STREAM_UNMASK, k, rows, length).to(device)  # (B, L)
        go = masked & (u < float(unmask[k]))
        v = _rng.uniforms(seed, STREAM_REMASK, k, rows, length).to(device)
        back = committed & (v < float(r[k]))
        x = draw_masked(graph, log_score, x, go, sigma, seed=seed, step=k, rows=rows,
                        proposal=sampler.proposal, use_rust=use_rust)  # fmt: skip
        x = torch.where(back, mask_id, x)
    if sampler.denoise:
        sigma = sampler.noise_level(steps, batch, device=device)
        masked = (x == mask_id) & free_b
        if bool(masked.any()):
            log_score = call(x, sigma)
            if on_call is not None:
                on_call(batch)
            x = draw_masked(graph, log_score, x, masked, sigma, seed=seed, step=steps, rows=rows,
                            proposal=sampler.proposal, use_rust=use_rust)  # fmt: skip
    return x
