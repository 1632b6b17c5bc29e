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

from typing import Any

import torch

from ddm import _rng
from ddm.sampling.first_hitting import draw_masked

__all__ = ["REMASK_SCHEDULES", "check_remask", "remask_rates", "remdm_step", "remdm_step_probs"]

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


def _rates(sampler: Any) -> tuple[torch.Tensor, torch.Tensor]:
    key = (sampler.num_inference_steps, sampler.remask, sampler.remask_schedule)
    cached = getattr(sampler, "_remask_rates", None)
    if cached is None or cached[0] != key:
        cached = (key, remask_rates(sampler._sigma_bar, sampler.remask, sampler.remask_schedule))
        sampler._remask_rates = cached
    return cached[1]


def remdm_step(
    sampler: Any,
    log_score: torch.Tensor,
    k: int,
    x: torch.Tensor,
    *,
    seed: int,
    seq_offset: int,
    use_rust: bool,
) -> torch.Tensor:
    """The ReMDM step at `timesteps[k]` (`Sampler.step` with `remask` set): new int64 tokens `[B, L]`.

    Step `k < steps` remasks and unmasks as in the module docstring; the denoising step `k = steps`
    unmasks every MASK left. Decisions are keyed by `(seed, k, seq_offset + b, i)`, token draws too
    (`first_hitting.draw_masked`: the Rust denoising kernel on the CPU).
    """
    graph = sampler.graph
    mask_id = graph.dim - 1
    batch, length = x.shape
    rows = torch.arange(batch, dtype=torch.int64, device=x.device) + seq_offset
    sigma = sampler.noise_level(k, batch, device=x.device)  # (B,)
    masked = x == mask_id  # (B, L)
    common = dict(seed=seed, step=k, rows=rows, proposal=sampler.proposal, use_rust=use_rust)
    if k == sampler.num_inference_steps:  # the denoising step
        return draw_masked(graph, log_score, x, masked, sigma, **common)
    r, unmask = _rates(sampler)
    go = masked & (_rng.uniforms(seed, STREAM_UNMASK, k, rows, length).to(x.device) < float(unmask[k]))
    back = ~masked & (_rng.uniforms(seed, STREAM_REMASK, k, rows, length).to(x.device) < float(r[k]))
    x = draw_masked(graph, log_score, x, go, sigma, **common)
    return torch.where(back, mask_id, x)


def remdm_step_probs(sampler: Any, log_score: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
    """The ReMDM step's probabilities `[B, L, dim]` float64 (`Sampler.step_probs` with `remask` set)."""
    from ddm.sampling import torch_steps
    from ddm.sampling.proposal import apply_to_step

    graph = sampler.graph
    mask_id = graph.dim - 1
    batch, length = x.shape
    masked = x == mask_id  # (B, L)
    all_mask = torch.full_like(x, mask_id)
    sigma = sampler.noise_level(k, batch, device=x.device)
    # x_theta at every position (as if MASK), with the transform: (B, L, dim), 0 on MASK
    theta = apply_to_step(torch_steps.denoise_step_probs(graph, all_mask, log_score, sigma), all_mask,
                          sampler.proposal)  # fmt: skip
    if k == sampler.num_inference_steps:
        keep = torch.nn.functional.one_hot(x, graph.dim).to(torch.float64)
        return torch.where(masked[..., None], theta, keep)
    r, unmask = (float(v[k]) for v in _rates(sampler))
    at_mask = theta * unmask
    at_mask[..., mask_id] = 1.0 - unmask
    at_real = torch.nn.functional.one_hot(x, graph.dim).to(torch.float64) * (1.0 - r)
    at_real[..., mask_id] += r
    return torch.where(masked[..., None], at_mask, at_real)
