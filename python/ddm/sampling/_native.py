"""The Rust core (`ddm._core`) on torch tensors: the only importer of `ddm._core`.

Each function takes a graph (anything with `absorbing: bool`, `vocab_size: int` and `dim: int`, such as
`ddm.graphs.Uniform` / `ddm.graphs.Absorbing`) and CPU torch tensors, hands them to Rust as NumPy views
(`Tensor.numpy()` shares memory: nothing is copied), and returns the result with `torch.from_numpy`
(again without a copy). Dtypes are fixed and never cast: int64 tokens, float32 log-scores, float64
per-sequence noise levels; anything else is a `TypeError` naming the argument.

Randomness is counter-based, keyed by `(seed, step, seq_offset + b, i)`: the result does not depend on the
number of threads (`DDM_NUM_THREADS`, else `RAYON_NUM_THREADS`, else all CPUs; one thread in a forked
child unless `DDM_NUM_THREADS` is set) nor on how a batch is split, as long as each part passes the
`seq_offset` of its first sequence.

Log-score checks: NaN and +-inf raise `ValueError` in every row a step reads. Rows a step never reads
are not checked: for the absorbing graph every row whose token is not MASK, and in every row the entry
at the current token (which is ignored and treated as 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddm import _core

__all__ = ["corrupt", "euler_step", "analytic_step", "denoise_step", "proposal_step", "propose"]


def _graph(graph: Any) -> tuple[bool, int]:
    try:
        absorbing, vocab_size, dim = graph.absorbing, graph.vocab_size, graph.dim
    except AttributeError as e:
        raise TypeError(
            f"graph must have absorbing, vocab_size and dim (a ddm.graphs.Graph), got {type(graph).__name__}"
        ) from e
    if not isinstance(absorbing, bool) or isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"graph.absorbing must be a bool and graph.vocab_size an int, got {graph!r}")
    if dim != vocab_size + int(absorbing):
        raise ValueError(f"graph.dim = {dim} does not match vocab_size {vocab_size} (absorbing={absorbing})")
    return absorbing, vocab_size


def _view(t: Any, name: str, dtype: torch.dtype) -> np.ndarray:
    """A zero-copy NumPy view of a CPU, contiguous tensor of exactly `dtype`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype {dtype}, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype} (nothing is cast implicitly)")
    if t.device.type != "cpu":
        raise TypeError(f"{name} must be on the CPU for the Rust core, got device {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if t.requires_grad:
        raise ValueError(f"{name} must not require grad (call .detach())")
    return t.numpy()


def _out(out: torch.Tensor | None) -> np.ndarray | None:
    return None if out is None else _view(out, "out", torch.int64)


def corrupt(
    graph: Any,
    x: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    step: int = 0,
    seq_offset: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward corruption `x_sigma ~ p_sigma|0(. | x)` (SPEC section 2) in Rust.

    Uniform: with probability `1 - e^{-sigma}` a token is replaced by a uniform draw over all N ids.
    Absorbing: with probability `1 - e^{-sigma}` it becomes MASK; MASK stays MASK.

    Args:
        graph: the forward graph (`absorbing`, `vocab_size`, `dim`).
        x: int64 tokens `[B, L]`.
        sigma: float64 total noise per sequence `[B]`, finite and >= 0.
        seed: the seed, an int in [0, 2**64).
        step: a counter mixed into the key (e.g. the training step).
        seq_offset: the index of the first sequence of this batch in a larger one.
        out: optional int64 `[B, L]` tensor to write into (must not share memory with `x`).

    Returns:
        int64 `[B, L]` (`out` when given).
    """
    absorbing, n = _graph(graph)
    xv, sv = _view(x, "x", torch.int64), _view(sigma, "sigma", torch.float64)
    r = _core.corrupt(xv, sv, absorbing, n, seed, step, seq_offset, _out(out))
    return out if out is not None else torch.from_numpy(r)


def euler_step(
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    rate_dt: torch.Tensor,
    seed: int,
    step: int,
    seq_offset: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Euler step (SPEC section 5) in Rust; the law of `ddm.sampling.torch_steps.euler_step_probs`.

    Args:
        graph: the forward graph (`absorbing`, `vocab_size`, `dim`).
        x: int64 current tokens `[B, L]`.
        log_score: float32 log-scores `[B, L, dim]` (the entry at the current token is ignored).
        rate_dt: float64 `sigma(t_k) * (t_k - t_{k+1})` per sequence `[B]`, finite and >= 0.
        seed: the seed, an int in [0, 2**64).
        step: the step index (part of the random key).
        seq_offset: the index of the first sequence of this batch in a larger one.
        out: optional int64 `[B, L]` tensor to write into (must not share memory with the inputs).

    Returns:
        int64 new tokens `[B, L]` (`out` when given).
    """
    return _step(_core.euler_step, "rate_dt", graph, x, log_score, rate_dt, seed, step, seq_offset, out)


def analytic_step(
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    dsigma: torch.Tensor,
    seed: int,
    step: int,
    seq_offset: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One analytic (Tweedie tau-leaping) step (SPEC section 5) in Rust.

    The law of `ddm.sampling.torch_steps.analytic_step_probs`: `probs_y = [exp(-dQ) s]_y exp(dQ)(x, y)`,
    clipped at 0 and renormalised; absorbing: only MASK positions move.

    Args:
        graph: the forward graph (`absorbing`, `vocab_size`, `dim`).
        x: int64 current tokens `[B, L]`.
        log_score: float32 log-scores `[B, L, dim]` (the entry at the current token is ignored).
        dsigma: float64 `sigma_bar(t_k) - sigma_bar(t_{k+1})` per sequence `[B]`, finite and >= 0.
        seed: the seed, an int in [0, 2**64).
        step: the step index (part of the random key).
        seq_offset: the index of the first sequence of this batch in a larger one.
        out: optional int64 `[B, L]` tensor to write into (must not share memory with the inputs).

    Returns:
        int64 new tokens `[B, L]` (`out` when given).
    """
    return _step(_core.analytic_step, "dsigma", graph, x, log_score, dsigma, seed, step, seq_offset, out)


def denoise_step(
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    step: int,
    seq_offset: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The final denoising step (SPEC section 5) in Rust: absorbing never returns MASK.

    The law of `ddm.sampling.torch_steps.denoise_step_probs` (absorbing MASK positions: `y ~ s_y` over
    the real tokens, for any `sigma`).

    Args:
        graph: the forward graph (`absorbing`, `vocab_size`, `dim`).
        x: int64 current tokens `[B, L]`.
        log_score: float32 log-scores `[B, L, dim]` (the entry at the current token is ignored).
        sigma: float64 remaining total noise `sigma_bar(eps)` per sequence `[B]`, finite and >= 0.
        seed: the seed, an int in [0, 2**64).
        step: the step index (part of the random key).
        seq_offset: the index of the first sequence of this batch in a larger one.
        out: optional int64 `[B, L]` tensor to write into (must not share memory with the inputs).

    Returns:
        int64 new tokens `[B, L]` (`out` when given).
    """
    return _step(_core.denoise_step, "sigma", graph, x, log_score, sigma, seed, step, seq_offset, out)


def _step(
    fn: Any,
    level_name: str,
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    level: torch.Tensor,
    seed: int,
    step: int,
    seq_offset: int,
    out: torch.Tensor | None,
) -> torch.Tensor:
    absorbing, n = _graph(graph)
    r = fn(
        _view(x, "x", torch.int64),
        _view(log_score, "log_score", torch.float32),
        _view(level, level_name, torch.float64),
        absorbing, n, seed, step, seq_offset, _out(out),
    )  # fmt: skip
    return out if out is not None else torch.from_numpy(r)


# ---- issue 14: the proposal transform (temperature, top-k, top-p) ----------------------------------------


def proposal_step(
    kind: str,
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    level: torch.Tensor,
    seed: int,
    step: int,
    proposal: Any,
    seq_offset: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reverse step (`kind` in euler / analytic / denoise) with its proposal distribution transformed.

    The law of `ddm.sampling.torch_steps` with `ddm.sampling.proposal.apply_to_step` (docs/math.md section
    5.10); the arguments are those of `euler_step` etc., plus `proposal` (a `ddm.sampling.proposal.Proposal`).
    """
    absorbing, n = _graph(graph)
    r = _core.proposal_step(
        kind,
        _view(x, "x", torch.int64),
        _view(log_score, "log_score", torch.float32),
        _view(level, "level", torch.float64),
        absorbing, n, seed, step,
        float(proposal.temperature), proposal.top_k, proposal.top_p,
        seq_offset, _out(out),
    )  # fmt: skip
    return out if out is not None else torch.from_numpy(r)


def propose(
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    seed: int,
    step: int,
    proposal: Any,
    seq_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A proposed token and its statistics at every MASK position (`ddm.sampling.confidence.propose`).

    Returns:
        int64 `[B, L]` tokens (`x` where not MASK) and float64 `[B, L, 3]`: the probability of the token,
        the top-1 minus top-2 margin and the entropy of the transformed conditional (0 where not MASK).
    """
    absorbing, n = _graph(graph)
    t, s = _core.propose(
        _view(x, "x", torch.int64),
        _view(log_score, "log_score", torch.float32),
        absorbing, n, seed, step,
        float(proposal.temperature), proposal.top_k, proposal.top_p, seq_offset,
    )  # fmt: skip
    return torch.from_numpy(t), torch.from_numpy(s)
