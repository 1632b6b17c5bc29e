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

`ddm.sample(predictor="analytic" | "euler", remask=eta)` runs this predictor (the step does not depend
on which grid predictor was named).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddm import _rng
from ddm.errors import InvalidArgument
from ddm.sampling import torch_steps
from ddm.sampling.predictors.base import Config, Predictor, register
from ddm.sampling.proposal import apply_to_step

__all__ = ["REMASK_SCHEDULES", "ReMDM", "ReMDMConfig", "remask_rates"]

REMASK_SCHEDULES = ("cap", "rescale")


@dataclass(frozen=True)
class ReMDMConfig(Config):
    """ReMDM's options: the proposal transform, the remasking strength and its schedule."""

    remask: float = field(
        default=0.0, metadata={"help": "ReMDM remasking strength in [0, 1]", "metavar": "ETA"}
    )
    remask_schedule: str = field(
        default="cap",
        metadata={"help": "how ETA sets the remasking probability", "choices": REMASK_SCHEDULES},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        eta = self.remask
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise InvalidArgument(f"remask must be a float in [0, 1] or None, got {type(eta).__name__}")
        if not 0.0 <= float(eta) <= 1.0:
            raise InvalidArgument(f"remask must lie in [0, 1], got {eta}")
        if self.remask_schedule not in REMASK_SCHEDULES:
            raise InvalidArgument(
                f"remask_schedule must be one of {REMASK_SCHEDULES}, got {self.remask_schedule!r}"
            )
        object.__setattr__(self, "remask", float(eta))


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


@register
class ReMDM(Predictor):
    """The ReMDM step on the grid (see the module docstring)."""

    name = "remdm"
    config_class = ReMDMConfig
    needs_mask = True

    def _rates(self, grid, k: int) -> tuple[float, float]:
        r, unmask = remask_rates(grid.sigma_bar, self.config.remask, self.config.remask_schedule)
        return float(r[k]), float(unmask[k])

    def step(self, grid, log_score, k, x, *, ops, seed, rows, out=None):
        """Step `k < steps` remasks and unmasks; the denoising step `k = steps` unmasks every MASK left.
        Decisions and token draws are keyed by `(seed, k, rows[b], i)`."""
        mask_id = grid.graph.mask_id
        length = x.shape[1]
        sigma = grid.sigma_bar[k].expand(x.shape[0]).to(x.device)  # (B,)
        masked = x == mask_id  # (B, L)
        common = dict(seed=seed, step=k, rows=rows, proposal=self.proposal)
        if k == grid.steps:  # the denoising step
            return ops.draw_masked(grid.graph, log_score, x, masked, sigma, **common)
        r, unmask = self._rates(grid, k)
        u_go = _rng.uniforms(seed, _rng.STREAMS["remask_unmask"], k, rows, length).to(x.device)  # (B, L)
        u_back = _rng.uniforms(seed, _rng.STREAMS["remask_remask"], k, rows, length).to(x.device)  # (B, L)
        go, back = masked & (u_go < unmask), ~masked & (u_back < r)
        x = ops.draw_masked(grid.graph, log_score, x, go, sigma, **common)
        return torch.where(back, mask_id, x)

    def step_probs(self, grid, log_score, k, x):
        mask_id = grid.graph.mask_id
        masked = x == mask_id  # (B, L)
        all_mask = torch.full_like(x, mask_id)
        sigma = grid.sigma_bar[k].expand(x.shape[0]).to(x.device)
        # x_theta at every position (as if MASK), with the transform: (B, L, dim), 0 on MASK
        theta = torch_steps.denoise_step_probs(grid.graph, all_mask, log_score, sigma)
        theta = apply_to_step(theta, all_mask, self.proposal)
        keep = torch.nn.functional.one_hot(x, grid.graph.dim).to(torch.float64)  # (B, L, dim)
        if k == grid.steps:
            return torch.where(masked[..., None], theta, keep)
        r, unmask = self._rates(grid, k)
        at_mask = theta * unmask
        at_mask[..., mask_id] = 1.0 - unmask
        at_real = keep * (1.0 - r)
        at_real[..., mask_id] += r
        return torch.where(masked[..., None], at_mask, at_real)
