"""Temperature, top-k and top-p on the per-position proposal distribution (docs/math.md section 5.10).

Every reverse step draws each position from a law of the shape "stay at `x`, or move to `y != x`":

- *Jump steps* (absorbing Euler / analytic / denoise at MASK, uniform Euler): stay with probability
  `max(0, 1 - c S)`, else move to `y` with probability proportional to `s_y`.
- *Tweedie steps* (uniform analytic / denoise): the clipped weights `w_x` (stay) and `w_y` (move) of
  docs/math.md section 5.6, normalised.

The **proposal distribution** is the move law: the step's law conditioned on leaving `x`, over
`y != x` (absorbing: over the real tokens, MASK excluded). The transforms act on it, and the
probability of staying is left as it is, so the unmasking rate of the absorbing graph (how many
positions a step commits) does not change with the temperature. For the absorbing denoising step and
for the first-hitting and confidence samplers the stay probability is 0, and the proposal is the
model's conditional `softmax(l_{0..N-1})` over the real tokens.

In order, with `w` the move weights:

1. `temperature=T`: `w_y -> w_y^(1/T)` (for a jump step, `softmax(l / T)`). `T = 0` is greedy decoding,
   the limit `T -> 0`: all the move mass on the most likely state (ties: the lower id), which is exactly
   `top_k=1` (the form both backends run: `Proposal.resolved`).
2. `top_k=k`: keep the `k` largest weights (ties: the lower id first), zero the rest.
3. `top_p=p`: rank by weight (ties: the lower id first) and keep each state whose predecessors hold
   less than `p` of the mass: the smallest prefix with mass `>= p` (nucleus sampling).

The kept weights are renormalised to the move mass. Each option at its neutral value (`temperature=1`,
`top_k=None`, `top_p=None`; also `top_p=1` and `top_k >= dim`) is skipped, so the step is the plain one
bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddm.errors import InvalidArgument

__all__ = ["Proposal", "make_proposal", "transform_weights", "apply_to_step"]


@dataclass(frozen=True)
class Proposal:
    """The transform of the proposal distribution (see the module docstring).

    Attributes:
        temperature: `T >= 0`; 1 leaves the law alone, 0 is greedy (the argmax, as `top_k=1`).
        top_k: keep the `k >= 1` most likely states; None keeps all.
        top_p: keep the nucleus of mass `p` in `(0, 1]`; None (or 1) keeps all.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def resolved(self) -> Proposal:
        """The transform the kernels run: greedy (`temperature=0`) as `top_k=1` at temperature 1, which is
        the argmax with ties to the lower id on both backends; any other proposal unchanged."""
        return Proposal(1.0, 1, None) if self.temperature == 0.0 else self

    def neutral_for(self, dim: int) -> bool:
        """Whether the transform is the identity on a law over `dim` states."""
        if self.temperature == 0.0:
            return dim <= 1
        return (
            self.temperature == 1.0
            and (self.top_k is None or self.top_k >= dim)
            and (self.top_p is None or self.top_p == 1.0)
        )

    @property
    def neutral(self) -> bool:
        """Whether every option is at its neutral value (1, None, None)."""
        return self.temperature == 1.0 and self.top_k is None and (self.top_p is None or self.top_p == 1.0)

    def to_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


def make_proposal(temperature: Any = 1.0, top_k: Any = None, top_p: Any = None) -> Proposal:
    """Check the three options and return a `Proposal` (ValueError / TypeError naming the argument)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise InvalidArgument(f"temperature must be a float, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (temperature >= 0.0 and temperature < float("inf")):
        raise InvalidArgument(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise InvalidArgument(f"top_k must be an int or None, got {type(top_k).__name__}")
        if top_k < 1:
            raise InvalidArgument(f"top_k must be >= 1 (or None for no cut), got {top_k}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise InvalidArgument(f"top_p must be a float or None, got {type(top_p).__name__}")
        top_p = float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument(f"top_p must lie in (0, 1] (or None for no cut), got {top_p}")
    return Proposal(temperature, top_k, top_p)


def transform_weights(w: torch.Tensor, proposal: Proposal) -> torch.Tensor:
    """Temperature, then top-k, then top-p on non-negative weights along the last dim (float64).

    Args:
        w: `[..., K]` non-negative weights (any floating dtype; need not be normalised).
        proposal: the transform.

    Returns:
        float64 `[..., K]` weights normalised to sum 1 per row (a row of zeros stays zeros).
    """
    proposal = proposal.resolved
    w = w.to(torch.float64)
    total = w.sum(-1, keepdim=True)  # (..., 1)
    if proposal.temperature != 1.0:
        lw = torch.log(w)  # -inf at 0
        top = lw.amax(-1, keepdim=True).clamp_min(-torch.finfo(torch.float64).max)  # (..., 1), finite
        w = torch.exp((lw - top) / proposal.temperature)
    k, dim = proposal.top_k, w.shape[-1]
    p = proposal.top_p
    if (k is not None and k < dim) or (p is not None and p < 1.0):
        # rank by weight, ties by the lower index (a stable sort of the descending order)
        sw, order = torch.sort(w, dim=-1, descending=True, stable=True)  # (..., K)
        keep = torch.ones_like(sw, dtype=torch.bool)
        if k is not None and k < dim:
            keep[..., k:] = False
            sw = torch.where(keep, sw, 0.0)
        if p is not None and p < 1.0:
            before = torch.cumsum(sw, -1) - sw  # (..., K): the mass ranked strictly before
            keep &= before < p * sw.sum(-1, keepdim=True)
        w = torch.zeros_like(w).scatter(-1, order, torch.where(keep, sw, 0.0))
    s = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / torch.where(s > 0, s, 1.0), torch.zeros_like(w))


def apply_to_step(probs: torch.Tensor, x: torch.Tensor, proposal: Proposal) -> torch.Tensor:
    """A step's law with its proposal (move) distribution transformed; the stay probability is kept.

    Args:
        probs: the step's probabilities `[B, L, dim]` (float64, rows sum to 1).
        x: int64 current tokens `[B, L]`.
        proposal: the transform; when neutral, `probs` is returned unchanged (the same tensor).

    Returns:
        float64 `[B, L, dim]`.
    """
    proposal = proposal.resolved
    if proposal.neutral_for(probs.shape[-1]):
        return probs
    stay = probs.gather(-1, x[..., None])  # (B, L, 1)
    move = probs.scatter(-1, x[..., None], 0.0)  # (B, L, dim): 0 at x (absorbing MASK rows: 0 at MASK)
    mass = move.sum(-1, keepdim=True)  # (B, L, 1)
    moved = transform_weights(move, proposal) * mass  # (B, L, dim)
    return moved.scatter(-1, x[..., None], stay)
