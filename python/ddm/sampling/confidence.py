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

from collections.abc import Callable
from typing import Any

import torch

from ddm import _rng
from ddm._categorical import inverse_cdf
from ddm.sampling.first_hitting import STREAM_TOKEN
from ddm.sampling.proposal import Proposal, apply_to_step

__all__ = [
    "ORDERS",
    "check_confidence_options",
    "confidence_commit",
    "confidence_decode",
    "confidence_level",
    "propose",
]

ORDERS = ("confidence", "margin", "entropy", "random")
STREAM_ORDER = 0x5EED0016


def check_confidence_options(order: Any, tokens_per_step: Any, threshold: Any, entropy_bound: Any) -> None:
    """ValueError / TypeError naming the argument for a bad option of the confidence sampler."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    given = [n for n, v in (("tokens_per_step", tokens_per_step), ("threshold", threshold),
                            ("entropy_bound", entropy_bound)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"give at most one of tokens_per_step, threshold and entropy_bound, got {given}")
    if tokens_per_step is not None:
        if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int):
            raise TypeError(f"tokens_per_step must be an int, got {type(tokens_per_step).__name__}")
        if tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
        if order == "random":
            raise ValueError(
                "threshold needs a score: order='confidence', 'margin' or 'entropy', not 'random'"
            )
    if entropy_bound is not None:
        if isinstance(entropy_bound, bool) or not isinstance(entropy_bound, (int, float)):
            raise TypeError(f"entropy_bound must be a float, got {type(entropy_bound).__name__}")
        if not 0.0 <= float(entropy_bound) < float("inf"):
            raise ValueError(f"entropy_bound must be a finite number >= 0, got {entropy_bound}")


def propose(
    graph: Any,
    log_score: torch.Tensor,
    x: torch.Tensor,
    *,
    seed: int,
    step: int,
    rows: torch.Tensor,
    proposal: Proposal,
    use_rust: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A proposed token and its statistics at every MASK position of `x`.

    Args:
        graph: the absorbing graph.
        log_score: `[B, L, dim]` log-scores at `x`.
        x: int64 `[B, L]`.
        seed, step, rows: the key of the draws, `(seed, step, rows[b], i)`; `rows = offset + arange(B)`.
        proposal: the transform of the conditional.
        use_rust: run in the Rust core.

    Returns:
        `(tokens, stats)`: int64 `[B, L]` (`x` where not MASK) and float64 `[B, L, 3]` holding the
        probability of the proposed token, the top-1 minus top-2 margin and the entropy (nats) of the
        transformed conditional (0 where not MASK).
    """
    mask_id = graph.dim - 1
    if use_rust:
        from ddm.sampling import _native

        xc = x.detach().to("cpu").contiguous()
        ls = log_score.detach().to(device="cpu", dtype=torch.float32).contiguous()
        offset = int(rows[0]) if rows.numel() else 0
        tokens, stats = _native.propose(graph, xc, ls, seed, step, proposal, offset)
        return tokens.to(x.device), stats.to(x.device)
    from ddm.sampling import torch_steps

    tokens = x.clone()
    stats = torch.zeros(*x.shape, 3, dtype=torch.float64, device=x.device)
    b_idx, i_idx = (x == mask_id).nonzero(as_tuple=True)  # (M,)
    if b_idx.numel() == 0:
        return tokens, stats
    masked = torch.full((b_idx.numel(), 1), mask_id, dtype=torch.int64, device=x.device)  # (M, 1)
    level = torch.ones(b_idx.numel(), dtype=torch.float64, device=x.device)
    probs = torch_steps.denoise_step_probs(graph, masked, log_score[b_idx, i_idx][:, None, :], level)
    probs = apply_to_step(probs, masked, proposal)[:, 0, :-1]  # (M, N): the real tokens
    u = _rng.uniforms(seed, STREAM_TOKEN, step, rows, x.shape[1])[b_idx, i_idx]  # (M,)
    tok = inverse_cdf(probs, u)  # (M,)
    top = probs.topk(min(2, probs.shape[-1]), dim=-1).values  # (M, 2)
    margin = top[:, 0] - (top[:, 1] if top.shape[-1] > 1 else 0.0)
    entropy = torch.special.entr(probs).sum(-1)  # (M,)
    tokens[b_idx, i_idx] = tok
    stats[b_idx, i_idx] = torch.stack([probs.gather(1, tok[:, None])[:, 0], margin, entropy], -1)
    return tokens, stats


def _commit_counts(
    score: torch.Tensor, entropy: torch.Tensor, remaining: torch.Tensor, calls_left: int, opts: dict
) -> torch.Tensor:
    """How many of the ranked proposals each row commits, `[B]` int64 (>= 1 where any is masked).

    `score`, `entropy`: `[B, L]` in ranking order (best first), `score` -inf past the masked ones.
    """
    if opts["tokens_per_step"] is not None:
        k = torch.full_like(remaining, opts["tokens_per_step"])
    elif opts["threshold"] is not None:
        k = (score > opts["threshold"]).sum(-1)
    elif opts["entropy_bound"] is not None:
        h = torch.where(torch.isfinite(score), entropy, 0.0)  # (B, L)
        excess = torch.cumsum(h, -1) - torch.cummax(h, -1).values  # non-decreasing along the ranking
        k = ((excess <= opts["entropy_bound"]) & torch.isfinite(score)).sum(-1)
    else:
        k = (remaining + max(calls_left, 1) - 1) // max(calls_left, 1)  # ceil
    return torch.minimum(k.clamp_min(1), remaining)


def confidence_level(
    schedule: Any, eps: float, remaining: torch.Tensor, n_free: torch.Tensor
) -> torch.Tensor:
    """The noise input of a call, `[B]` float64: the masking probability is the masked fraction
    `remaining / n_free`, relative to `t = 1`, clamped at `sigma_bar(eps)`."""
    sb_one, sb_eps = (float(v) for v in schedule.total_noise(torch.tensor([1.0, float(eps)])))
    q_one = -torch.expm1(torch.tensor(-sb_one, dtype=torch.float64))
    frac = remaining.to(torch.float64) / n_free.clamp_min(1).to(torch.float64)  # (B,)
    return (-torch.log1p(-frac * q_one.to(remaining.device))).clamp_min(sb_eps)


def confidence_commit(
    graph: Any,
    log_score: torch.Tensor,
    x: torch.Tensor,
    *,
    seed: int,
    step: int,
    rows: torch.Tensor,
    proposal: Proposal,
    use_rust: bool,
    order: str,
    opts: dict,
    calls_left: int,
) -> torch.Tensor:
    """One call of the confidence sampler: propose at every MASK, commit the best by `order` and the rule
    of `opts` (`tokens_per_step`, `threshold`, `entropy_bound`, else `ceil(masked / calls_left)`).

    Returns int64 `[B, L]`: `x` with the committed proposals written in (rows without MASK unchanged).
    """
    length = x.shape[1]
    masked = x == graph.dim - 1  # (B, L)
    remaining = masked.sum(-1)  # (B,)
    tokens, stats = propose(graph, log_score, x, seed=seed, step=step, rows=rows, proposal=proposal,
                            use_rust=use_rust)  # fmt: skip
    if order == "random":
        score = _rng.uniforms(seed, STREAM_ORDER, step, rows, length).to(x.device)
    elif order == "entropy":
        score = torch.exp(-stats[..., 2])
    else:
        score = stats[..., 0 if order == "confidence" else 1]
    score = torch.where(masked, score, -torch.inf)  # (B, L)
    ranked, rank_idx = torch.sort(score, dim=-1, descending=True, stable=True)  # (B, L)
    k = _commit_counts(ranked, stats[..., 2].gather(1, rank_idx), remaining, calls_left, opts)  # (B,)
    commit_sorted = torch.arange(length, device=x.device)[None, :] < k[:, None]  # (B, L)
    commit = torch.zeros_like(masked).scatter_(1, rank_idx, commit_sorted) & masked
    return torch.where(commit, tokens, x)


def confidence_decode(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    graph: Any,
    schedule: Any,
    x: torch.Tensor,
    *,
    seed: int,
    steps: int,
    eps: float,
    proposal: Proposal,
    use_rust: bool,
    order: str,
    tokens_per_step: int | None,
    threshold: float | None,
    entropy_bound: float | None,
    on_call: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the confidence sampler from `x` (MASK at the free positions); see the module docstring.

    Returns:
        int64 `[B, L]` without MASK.
    """
    batch = x.shape[0]
    mask_id = graph.dim - 1
    rows = torch.arange(batch, dtype=torch.int64, device=x.device)
    n_free = (x == mask_id).sum(-1)  # (B,)
    opts = dict(tokens_per_step=tokens_per_step, threshold=threshold, entropy_bound=entropy_bound)
    j = 0
    while True:
        remaining = (x == mask_id).sum(-1)  # (B,)
        active = remaining > 0
        if not bool(active.any()):
            return x
        idx = active.nonzero().squeeze(1)
        sigma = confidence_level(schedule, eps, remaining, n_free)  # (B,)
        out = call(x[idx], sigma[idx], idx)  # (b, L, dim)
        if on_call is not None:
            on_call(idx.numel())
        log_score = out.new_zeros((batch, *out.shape[1:])).index_copy_(0, idx, out)  # (B, L, dim)
        x = confidence_commit(graph, log_score, x, seed=seed, step=j, rows=rows, proposal=proposal,
                              use_rust=use_rust, order=order, opts=opts, calls_left=steps - j)  # fmt: skip
        j += 1
