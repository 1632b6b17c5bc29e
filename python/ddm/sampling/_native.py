"""The Rust core (`ddm._core`) on torch tensors: the only importer of `ddm._core`.

Each function takes a graph (a `ddm.graphs.Absorbing` or a `ddm.graphs.Uniform`) and CPU torch tensors,
hands them to Rust as NumPy views (`Tensor.numpy()` shares memory: nothing is copied), and returns the
result with `torch.from_numpy` (again without a copy). Dtypes are fixed and never cast: int64 tokens,
float32 log-scores, float64 per-sequence noise levels; anything else is an `InvalidArgument` naming the
argument.

Randomness is counter-based, keyed by `(seed, step, seq_offset + b, i)` (and, for `corrupt`, the stream
tag: its uniforms are `ddm._rng.uniforms`, those of the torch corruption): the result does not
depend on the number of threads (`DDM_NUM_THREADS`, else `RAYON_NUM_THREADS`, else all CPUs; one thread
in a forked child unless `DDM_NUM_THREADS` is set) nor on how a batch is split, as long as each part
passes the `seq_offset` of its first sequence.

Log-score checks: NaN and +inf raise `InvalidArgument` in every row a step reads (-inf is a probability
of 0). Rows a step never reads are not checked: for the absorbing graph every row whose token is not MASK,
and in every row the entry at the current token (which is ignored and treated as 0).

Errors: a bad argument (type, dtype, shape, layout, value) raises `ddm.errors.InvalidArgument` (a
`ValueError` and a `TypeError`), whether this module or the Rust core finds it. The graph crosses to Rust
as its kind, chosen by its exact type: a graph the core has no kernel for (any other `Graph`, subclasses of
`Uniform` and `Absorbing` included) raises `ddm.errors.BackendError`, never runs another graph's kernel.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from ddm.errors import BackendError, InvalidArgument
from ddm.graphs import Absorbing, Uniform

# The compiled extension, imported by name: import-linter cannot see a compiled module, so a static
# `from ddm import _core` reads to it as an import of the package root (and every layer under it).
_core = importlib.import_module("ddm._core")

__all__ = ["KINDS", "corrupt", "reverse_step", "proposal_step", "propose", "supports"]

KINDS = ("euler", "analytic", "denoise")
# What a step's `level` is, by kind (the name used in error messages).
_LEVEL_ARG = {"euler": "rate_dt", "analytic": "dsigma", "denoise": "sigma"}
# The graph kinds of the Rust core, by exact graph type: a subclass may change the law, so it is refused.
_GRAPH_KINDS: dict[type, str] = {Absorbing: "absorbing", Uniform: "uniform"}

_T = TypeVar("_T")


def supports(graph: Any) -> bool:
    """Whether the Rust core has a kernel for `graph` (by its exact type)."""
    return type(graph) in _GRAPH_KINDS


def _graph(graph: Any) -> tuple[str, int]:
    """The kind name and vocabulary size of `graph` for the Rust core; `BackendError` if it has no kernel."""
    kind = _GRAPH_KINDS.get(type(graph))
    if kind is None:
        raise BackendError(
            f"the Rust backend has kernels for ddm.graphs.Absorbing and ddm.graphs.Uniform only, got "
            f'{type(graph).__module__}.{type(graph).__qualname__}; use backend="torch" for this graph'
        )
    return kind, graph.vocab_size


def _call(kernel: Callable[..., _T], *args: Any) -> _T:
    """`kernel(*args)`, with the core's `TypeError` / `ValueError` for a bad argument as `InvalidArgument`."""
    try:
        return kernel(*args)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(str(e)) from None


def _view(t: Any, name: str, dtype: torch.dtype) -> np.ndarray:
    """A zero-copy NumPy view of a CPU, contiguous tensor of exactly `dtype`."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgument(f"{name} must be a torch.Tensor of dtype {dtype}, got {type(t).__name__}")
    if t.dtype != dtype:
        raise InvalidArgument(f"{name} must have dtype {dtype}, got {t.dtype} (nothing is cast implicitly)")
    if t.device.type != "cpu":
        raise InvalidArgument(f"{name} must be on the CPU for the Rust core, got device {t.device}")
    if not t.is_contiguous():
        raise InvalidArgument(f"{name} must be contiguous (call .contiguous())")
    if t.requires_grad:
        raise InvalidArgument(f"{name} must not require grad (call .detach())")
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
    *,
    stream: int,
) -> torch.Tensor:
    """Forward corruption `x_sigma ~ p_sigma|0(. | x)` (docs/math.md section 2) in Rust, keyed as in torch.

    Position `(b, i)` draws one uniform `u = ddm._rng.uniforms(seed, stream, step,
    seq_offset + b, i)` and moves when `u < 1 - e^{-sigma_b}`: absorbing, to MASK (MASK stays MASK);
    uniform, to `floor(u / (1 - e^{-sigma_b}) * N)` (clamped to N - 1). That is, operation for
    operation, the torch corruption of `Sampler.add_noise` and of the keyed training loss, so the tokens
    are bit-identical to theirs for the same key; the jump probability `-torch.expm1(-sigma)` is computed
    here in torch, as they compute it (libm's expm1 and torch's vectorised one differ in the last bit).

    Args:
        graph: the forward graph, a `ddm.graphs.Absorbing` or `ddm.graphs.Uniform` (exactly).
        x: int64 tokens `[B, L]`.
        sigma: float64 total noise per sequence `[B]`, finite and >= 0.
        seed: the seed, an int in [0, 2**64).
        step: the step of the key (the training step; 0 for `add_noise`).
        seq_offset: the sequence index of row 0 (the key of row `b` is `seq_offset + b`).
        out: optional int64 `[B, L]` tensor to write into (must not share memory with `x`).
        stream: the stream tag of the key, an int in [0, 2**32) (`_rng.STREAM_FORWARD` for `add_noise`,
            the training corruption's own tag for the loss).

    Returns:
        int64 `[B, L]` (`out` when given).
    """
    kind, n = _graph(graph)
    xv = _view(x, "x", torch.int64)
    _view(sigma, "sigma", torch.float64)
    bad = ~(torch.isfinite(sigma) & (sigma >= 0))  # (B,)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise InvalidArgument(
            f"sigma: noise level {float(sigma[b])} at [{b}] must be finite and non-negative"
        )
    p_move = -torch.expm1(-sigma)  # (B,): 1 - e^{-sigma}, the torch twins' expression
    r = _call(_core.corrupt, xv, p_move.numpy(), kind, n, seed, stream, step, seq_offset, _out(out))
    return out if out is not None else torch.from_numpy(r)


def reverse_step(
    kind: str,
    graph: Any,
    x: torch.Tensor,
    log_score: torch.Tensor,
    level: torch.Tensor,
    seed: int,
    step: int,
    seq_offset: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reverse step (docs/math.md section 5) in Rust, with the law of its torch twin in `torch_steps`.

    - `"euler"`: `level` is `rate_dt = sigma(t_k) * (t_k - t_{k+1})`; the law of `euler_step_probs`.
    - `"analytic"` (Tweedie tau-leaping): `level` is `dsigma = sigma_bar(t_k) - sigma_bar(t_{k+1})`; the
      law of `analytic_step_probs`, `probs_y = [exp(-dQ) s]_y exp(dQ)(x, y)` clipped at 0 and
      renormalised.
    - `"denoise"`: `level` is the remaining total noise `sigma = sigma_bar(eps)`; the law of
      `denoise_step_probs` (absorbing MASK positions: `y ~ s_y` over the real tokens, never MASK).

    Absorbing: only MASK positions move.

    Args:
        kind: `"euler"`, `"analytic"` or `"denoise"`.
        graph: the forward graph, a `ddm.graphs.Absorbing` or `ddm.graphs.Uniform` (exactly).
        x: int64 current tokens `[B, L]`.
        log_score: float32 log-scores `[B, L, dim]` (the entry at the current token is ignored).
        level: float64 noise level per sequence `[B]` (see above), finite and >= 0.
        seed: the seed, an int in [0, 2**64).
        step: the step index (part of the random key).
        seq_offset: the index of the first sequence of this batch in a larger one.
        out: optional int64 `[B, L]` tensor to write into (must not share memory with the inputs).

    Returns:
        int64 new tokens `[B, L]` (`out` when given).

    Raises:
        InvalidArgument: `kind` is not one of `KINDS` (and the checks of the module docstring).
        BackendError: the Rust core has no kernel for `graph`.
    """
    if kind not in _LEVEL_ARG:
        raise InvalidArgument(f"kind must be one of {KINDS}, got {kind!r}")
    graph_kind, n = _graph(graph)
    r = _call(
        _core.reverse_step,
        kind,
        _view(x, "x", torch.int64),
        _view(log_score, "log_score", torch.float32),
        _view(level, _LEVEL_ARG[kind], torch.float64),
        graph_kind, n, seed, step, seq_offset, _out(out),
    )  # fmt: skip
    return out if out is not None else torch.from_numpy(r)


# ---- the proposal transform (temperature, top-k, top-p) ------------------------------------------------


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
    graph_kind, n = _graph(graph)
    r = _call(
        _core.proposal_step,
        kind,
        _view(x, "x", torch.int64),
        _view(log_score, "log_score", torch.float32),
        _view(level, "level", torch.float64),
        graph_kind, n, seed, step,
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
    kind, n = _graph(graph)
    t, s = _call(
        _core.propose,
        _view(x, "x", torch.int64),
        _view(log_score, "log_score", torch.float32),
        kind, n, seed, step,
        float(proposal.temperature), proposal.top_k, proposal.top_p, seq_offset,
    )  # fmt: skip
    return torch.from_numpy(t), torch.from_numpy(s)
