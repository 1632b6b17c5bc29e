"""Reverse-process steps in torch: the reference for the Rust core and the CUDA path (docs/math.md section 5).

Every step updates all positions of a batch independently (tau-leaping, SEDD section 4.1) from the
log-scores `l` of a score model at the current noise level. The entry of `l` at the current token is
ignored and treated as 0 (`s_x = 1`). Each `*_probs` function returns the `[B, L, dim]` float64 transition
probabilities, clipped at 0 and renormalised; the matching step function draws new tokens from them with an
exact float64 categorical draw (`ddm._categorical`).

Noise arguments are per sequence: a float, a 0-d tensor, a `[B]` or a `[B, 1]` tensor; they are used in
float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ddm._categorical import sample_categorical
from ddm.graphs import Graph, _as_noise, _check_tokens

__all__ = [
    "euler_step_probs",
    "analytic_step_probs",
    "denoise_step_probs",
    "euler_step",
    "analytic_step",
    "denoise_step",
    "step_probs",
]


# --------------------------------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------------------------------


def _check_inputs(graph: Any, x: Any, log_score: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a ddm.graphs.Graph, got {type(graph).__name__}")
    x = _check_tokens(x, graph.dim, "x")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [B, L], got {tuple(x.shape)}")
    if not isinstance(log_score, torch.Tensor) or not log_score.is_floating_point():
        raise TypeError("log_score must be a floating torch.Tensor")
    if tuple(log_score.shape) != (*x.shape, graph.dim):
        raise ValueError(
            f"log_score must have shape {(*x.shape, graph.dim)} (x.shape + (dim,)) for {graph!r}, "
            f"got {tuple(log_score.shape)}"
        )
    if log_score.device != x.device:
        raise ValueError(f"log_score is on {log_score.device} but x is on {x.device}")
    return x, log_score


def _per_sequence(value: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """A per-sequence noise argument as float64: 0-d, or `[B, 1]` so that it broadcasts against `x`."""
    v = _as_noise(value, name, dtype=torch.float64, device=x.device).to(torch.float64)
    batch = x.shape[0]
    if v.dim() == 0:
        return v
    if v.dim() == 1 and v.shape[0] == batch:
        return v[:, None]  # (B, 1)
    if v.dim() == 2 and tuple(v.shape) == (batch, 1):
        return v
    raise ValueError(f"{name} must be a scalar, [B] or [B, 1] with B={batch}, got shape {tuple(v.shape)}")


def _log_scores(x: torch.Tensor, log_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-scores shifted by their row maximum, and the shift.

    The entry at the current token is set to 0 (`s_x = 1`) before the shift. Returns `(l - m, m)` with
    `m = max(0, max_y l_y)` per row, `[B, L, 1]`, so that `exp(l - m) <= 1` never overflows (a log-score
    above 709.78 would make `exp` infinite and the normalisation NaN); every step's law is homogeneous
    in the scores once its constant terms are scaled by `e^{-m}`, so the shift leaves the law unchanged
    (docs/math.md section 5). `-inf` is a score of exactly 0; NaN and `+inf` are refused.
    """
    l = log_score.detach().to(torch.float64).scatter(-1, x[..., None], 0.0)  # (B, L, dim)
    if not bool(torch.all(l < torch.inf)):  # NaN compares false
        raise ValueError(
            "log_score holds NaN or +inf (away from the current token); -inf is allowed (probability 0)"
        )
    m = l.amax(dim=-1, keepdim=True).clamp_min(0.0)  # (B, L, 1); l_x = 0 so m is finite
    return l - m, m


def _clip_normalise(probs: torch.Tensor) -> torch.Tensor:
    """Clip at 0 (a too-large step can make some probabilities negative) and renormalise each row."""
    probs = probs.clamp(min=0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------------
# Probabilities
# --------------------------------------------------------------------------------------------------------


def euler_step_probs(graph: Graph, x: torch.Tensor, log_score: torch.Tensor, rate_dt: Any) -> torch.Tensor:
    """Euler (first-order tau-leaping) step probabilities (SEDD algorithm 1; docs/math.md section 5).

    `probs_y = rate_dt Q(x, y) s_y` for `y != x` and `probs_x = 1 - sum_{y != x} probs_y`, i.e.
    `one_hot(x) + rate_dt * reverse_rate(x, s)`; absorbing: only MASK positions move.

    Args:
        graph: the forward graph.
        x: int64 current tokens `[B, L]`.
        log_score: log-scores at the current noise level, `[B, L, dim]`.
        rate_dt: `sigma(t_k) * (t_k - t_{k+1})` per sequence (`[B]`, `[B, 1]` or a scalar), >= 0.

    Returns:
        float64 probabilities `[B, L, dim]`, clipped at 0 and renormalised.
    """
    x, log_score = _check_inputs(graph, x, log_score)
    h = _per_sequence(rate_dt, "rate_dt", x)[..., None]  # (B, 1, 1) or ()
    l, m = _log_scores(x, log_score)
    s = torch.exp(l)  # (B, L, dim): the scores times e^{-m}, s_x = e^{-m}
    # one_hot(x) e^{-m} + h reverse_rate(x, s): the Euler law scaled by e^{-m}
    probs = F.one_hot(x, graph.dim).to(torch.float64) * torch.exp(-m) + h * graph.reverse_rate(x, s)
    return _clip_normalise(probs)


def analytic_step_probs(graph: Graph, x: torch.Tensor, log_score: torch.Tensor, dsigma: Any) -> torch.Tensor:
    """Analytic (Tweedie tau-leaping) step probabilities (SEDD eq. 19; docs/math.md section 5).

    `probs_y = [exp(-d Q) s]_y exp(d Q)(x, y)` with `d = dsigma`; they sum to 1 exactly when `s_x = 1`.
    Absorbing, `x = MASK`: `probs_y = (e^d - 1) s_y` off MASK; `x != MASK` stays.

    Args:
        graph: the forward graph.
        x: int64 current tokens `[B, L]`.
        log_score: log-scores at `sigma_bar(t_k)`, `[B, L, dim]`.
        dsigma: `sigma_bar(t_k) - sigma_bar(t_{k+1})` per sequence (`[B]`, `[B, 1]` or a scalar), >= 0.

    Returns:
        float64 probabilities `[B, L, dim]`, clipped at 0 and renormalised.
    """
    x, log_score = _check_inputs(graph, x, log_score)
    d = _per_sequence(dsigma, "dsigma", x)  # (B, 1) or ()
    s = torch.exp(_log_scores(x, log_score)[0])  # (B, L, dim), scaled by e^{-m} (linear in s)
    probs = graph.staggered_score(s, d) * graph.transp_transition(x, d)  # (B, L, dim)
    return _clip_normalise(probs)


def denoise_step_probs(graph: Graph, x: torch.Tensor, log_score: torch.Tensor, sigma: Any) -> torch.Tensor:
    """Final denoising step probabilities: the analytic step removing all remaining noise (math.md section 5).

    With `d = sigma = sigma_bar(eps)`. Absorbing: the MASK state is dropped, so a MASK position moves to a
    real token `y` with probability `s_y / sum_{j != MASK} s_j` (computed as a softmax of the log-scores,
    which cannot underflow) and no MASK is left.

    Args:
        graph: the forward graph.
        x: int64 current tokens `[B, L]`.
        log_score: log-scores at `sigma`, `[B, L, dim]`.
        sigma: the remaining total noise per sequence (`[B]`, `[B, 1]` or a scalar), >= 0.

    Returns:
        float64 probabilities `[B, L, dim]`; absorbing: zero on MASK.
    """
    x, log_score = _check_inputs(graph, x, log_score)
    d = _per_sequence(sigma, "sigma", x)
    if not graph.absorbing:
        s = torch.exp(_log_scores(x, log_score)[0])
        return _clip_normalise(graph.staggered_score(s, d) * graph.transp_transition(x, d))
    # absorbing: (e^d - 1) s_y on real tokens for MASK rows, then MASK dropped and renormalised; the common
    # factor (e^d - 1) cancels, leaving softmax(l) over the real tokens. Unmasked rows keep their token.
    l = _log_scores(x, log_score)[0]
    masked = x == graph.mask_id  # (B, L)
    if bool((masked & (l[..., :-1] == -torch.inf).all(dim=-1)).any()):
        raise ValueError(
            "log_score: every real token of a MASK position has log-score -inf, so the denoising step "
            "has no token to move to"
        )
    real = torch.softmax(l[..., :-1], dim=-1)  # (B, L, N)
    real = torch.cat([real, torch.zeros_like(real[..., :1])], dim=-1)  # (B, L, dim), 0 on MASK
    keep = F.one_hot(x, graph.dim).to(torch.float64)
    return torch.where(masked[..., None], real, keep)


# --------------------------------------------------------------------------------------------------------
# Draws
# --------------------------------------------------------------------------------------------------------


def euler_step(
    graph: Graph,
    x: torch.Tensor,
    log_score: torch.Tensor,
    rate_dt: Any,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One Euler step: new int64 tokens `[B, L]` drawn from `euler_step_probs` (float64 inverse CDF)."""
    return sample_categorical(euler_step_probs(graph, x, log_score, rate_dt), generator)


def analytic_step(
    graph: Graph,
    x: torch.Tensor,
    log_score: torch.Tensor,
    dsigma: Any,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One analytic step: new int64 tokens `[B, L]` drawn from `analytic_step_probs`."""
    return sample_categorical(analytic_step_probs(graph, x, log_score, dsigma), generator)


def denoise_step(
    graph: Graph,
    x: torch.Tensor,
    log_score: torch.Tensor,
    sigma: Any,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The final denoising step: new int64 tokens `[B, L]` from `denoise_step_probs` (never MASK)."""
    return sample_categorical(denoise_step_probs(graph, x, log_score, sigma), generator)


def step_probs(kind: str, graph: Graph, x: torch.Tensor, log_score: torch.Tensor, level: Any) -> torch.Tensor:
    """The probabilities of the step `kind` (`"euler"`, `"analytic"` or `"denoise"`), `[B, L, dim]` float64;
    `level` is its noise argument (`rate_dt`, `dsigma` or `sigma`)."""
    fns = {"euler": euler_step_probs, "analytic": analytic_step_probs, "denoise": denoise_step_probs}
    if kind not in fns:
        raise ValueError(f"kind must be one of {sorted(fns)}, got {kind!r}")
    return fns[kind](graph, x, log_score, level)
