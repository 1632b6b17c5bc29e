"""Confidence-ordered parallel decoding for the absorbing graph (docs/math.md section 9).

Each network call proposes a token at every masked position, drawn from the model's conditional over the
real tokens with the proposal transform (`ddm.sampling.proposal`), and scores each proposal:

- `order="confidence"`: the probability of the proposed token (MaskGIT; LLaDA's low-confidence
  remasking);
- `order="margin"`: the top-1 minus the top-2 probability;
- `order="entropy"`: `exp(-H)` with `H` the entropy of the (transformed) conditional, in `(0, 1]`;
- `order="random"`: a uniform key per position (with one token per call this is exact ancestral
  sampling in a uniformly random order, the first-hitting sampler of a time-independent model).

It then commits the best-scored proposals (ties: the lower position first) and keeps the others masked:

- `tokens_per_step=k`: the `k` best;
- `threshold=tau`: every one scored above `tau`, and at least the best one (Fast-dLLM);
- `entropy_bound=gamma`: the longest prefix of the ranking with `sum H - max H <= gamma` (the EB-sampler,
  Ben-Hamu et al. 2025, arXiv 2505.24857; the left side bounds the mutual information of the committed
  tokens), at least one;
- none of these: `ceil(masked / calls left)` of `steps` calls (a linear schedule: `steps >= L` gives one
  token per call).

The model is called at the noise level whose masking probability is the masked fraction, relative to
`t = 1`: `sigma = -log1p(-f (1 - e^{-sigma_bar(1)}))`, clamped at `sigma_bar(eps)` (a time-independent
model ignores it). A row with no MASK left is not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ddm import _rng
from ddm.errors import InvalidArgument
from ddm.sampling.predictors.base import Config, Grid, Predictor, register

__all__ = ["ORDERS", "Confidence", "ConfidenceConfig", "confidence_level"]

ORDERS = ("confidence", "margin", "entropy", "random")


def _number(value: Any, name: str, kind: type) -> None:
    ok = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok):
        raise InvalidArgument(
            f"{name} must be {'an int' if kind is int else 'a float'}, got {type(value).__name__}"
        )


@dataclass(frozen=True)
class ConfidenceConfig(Config):
    """The confidence sampler's options: the proposal transform, the score and the commit rule."""

    tokens_per_step: int | None = field(
        default=None, metadata={"help": "confidence: commit the K best proposals per call", "metavar": "K"}
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "confidence: commit every proposal scored above TAU", "metavar": "TAU"},
    )
    order: str = field(
        default="confidence", metadata={"help": "confidence: the score of a proposal", "choices": ORDERS}
    )
    entropy_bound: float | None = field(
        default=None, metadata={"help": "confidence: the EB-sampler's entropy bound", "metavar": "G"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order not in ORDERS:
            raise InvalidArgument(f"order must be one of {ORDERS}, got {self.order!r}")
        given = [n for n in ("tokens_per_step", "threshold", "entropy_bound") if getattr(self, n) is not None]
        if len(given) > 1:
            raise InvalidArgument(
                f"give at most one of tokens_per_step, threshold and entropy_bound, got {given}"
            )
        if self.tokens_per_step is not None:
            _number(self.tokens_per_step, "tokens_per_step", int)
            if self.tokens_per_step < 1:
                raise InvalidArgument(f"tokens_per_step must be >= 1, got {self.tokens_per_step}")
        if self.threshold is not None:
            _number(self.threshold, "threshold", float)
            if not 0.0 < float(self.threshold) <= 1.0:
                raise InvalidArgument(f"threshold must lie in (0, 1], got {self.threshold}")
            if self.order == "random":
                raise InvalidArgument(
                    "threshold needs a score: order='confidence', 'margin' or 'entropy', not 'random'"
                )
        if self.entropy_bound is not None:
            _number(self.entropy_bound, "entropy_bound", float)
            if not 0.0 <= float(self.entropy_bound) < float("inf"):
                raise InvalidArgument(f"entropy_bound must be a finite number >= 0, got {self.entropy_bound}")


def confidence_level(
    schedule: Any, eps: float, remaining: torch.Tensor, n_free: torch.Tensor
) -> torch.Tensor:
    """The noise input of a call, `[B]` float64: the masking probability is the masked fraction
    `remaining / n_free`, relative to `t = 1`, clamped at `sigma_bar(eps)`."""
    sb_one, sb_eps = (float(v) for v in schedule.total_noise(torch.tensor([1.0, float(eps)])))
    q_one = -torch.expm1(torch.tensor(-sb_one, dtype=torch.float64))
    frac = remaining.to(torch.float64) / n_free.clamp_min(1).to(torch.float64)  # (B,)
    return (-torch.log1p(-frac * q_one.to(remaining.device))).clamp_min(sb_eps)


@register
class Confidence(Predictor):
    """Confidence-ordered parallel decoding (see the module docstring)."""

    name = "confidence"
    config_class = ConfidenceConfig
    needs_mask = True
    unmasking = True

    def max_index(self, grid: Grid) -> int | None:
        return None

    def total_calls(self, grid: Grid, n_free: int) -> int | None:
        return None

    def finished(self, grid, x, k):
        return not bool((x == grid.graph.mask_id).any())

    def active(self, grid, k, x, *, seed, rows):
        return (x == grid.graph.mask_id).sum(-1) > 0

    def noise_level(self, grid, k, x, *, seed, rows, n_free):
        if n_free is None:
            raise InvalidArgument(
                "predictor='confidence': the noise level needs n_free, the first call's MASK count"
            )
        remaining = (x == grid.graph.mask_id).sum(-1)  # (B,)
        return confidence_level(grid.schedule, grid.eps, remaining, n_free.to(x.device))

    def _commit_counts(
        self, score: torch.Tensor, entropy: torch.Tensor, remaining: torch.Tensor, calls_left: int
    ):
        """How many of the ranked proposals each row commits, `[B]` int64 (>= 1 where any is masked).

        `score`, `entropy`: `[B, L]` in ranking order (best first), `score` -inf past the masked ones.
        """
        c = self.config
        if c.tokens_per_step is not None:
            k = torch.full_like(remaining, c.tokens_per_step)
        elif c.threshold is not None:
            k = (score > c.threshold).sum(-1)
        elif c.entropy_bound is not None:
            h = torch.where(torch.isfinite(score), entropy, 0.0)  # (B, L)
            excess = torch.cumsum(h, -1) - torch.cummax(h, -1).values  # non-decreasing along the ranking
            k = ((excess <= c.entropy_bound) & torch.isfinite(score)).sum(-1)
        else:
            k = (remaining + max(calls_left, 1) - 1) // max(calls_left, 1)  # ceil
        return torch.minimum(k.clamp_min(1), remaining)

    def step(self, grid, log_score, k, x, *, ops, seed, rows, out=None):
        """Propose at every MASK, commit the best by `order` and the commit rule; rows without MASK are
        unchanged."""
        length = x.shape[1]
        masked = x == grid.graph.mask_id  # (B, L)
        remaining = masked.sum(-1)  # (B,)
        tokens, stats = ops.propose(
            grid.graph, log_score, x, seed=seed, step=k, rows=rows, proposal=self.proposal
        )
        order = self.config.order
        if order == "random":
            score = _rng.uniforms(seed, _rng.STREAMS["confidence_order"], k, rows, length).to(x.device)
        elif order == "entropy":
            score = torch.exp(-stats[..., 2])
        else:
            score = stats[..., 0 if order == "confidence" else 1]
        score = torch.where(masked, score, -torch.inf)  # (B, L)
        ranked, rank_idx = torch.sort(score, dim=-1, descending=True, stable=True)  # (B, L)
        n = self._commit_counts(ranked, stats[..., 2].gather(1, rank_idx), remaining, grid.steps - k)  # (B,)
        commit_sorted = torch.arange(length, device=x.device)[None, :] < n[:, None]  # (B, L)
        commit = torch.zeros_like(masked).scatter_(1, rank_idx, commit_sorted) & masked
        return torch.where(commit, tokens, x)
