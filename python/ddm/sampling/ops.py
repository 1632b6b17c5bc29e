"""The one seam between the samplers and a backend: `Ops`, with `TorchOps` and `RustOps`.

Every predictor reaches a backend through the four operations of `Ops`, so a predictor never asks which
backend it runs on:

- `reverse_step`: one grid step (`"euler"`, `"analytic"` or `"denoise"`) with the proposal transform;
- `draw_masked`: a real token at chosen MASK positions from the model's conditional (first hitting,
  ReMDM);
- `propose`: a token and its statistics at every MASK (confidence);
- `corrupt`: the forward corruption (`Sampler.add_noise`, the keyed training loss).

`TorchOps` computes the law in float64 (`ddm.sampling.torch_steps`, `ddm.sampling.proposal`) and draws by
inverse CDF over the hashed uniforms of `ddm._rng`; it runs on any device. `RustOps` hands CPU tensors to
the compiled core (`ddm.sampling._native`) and is the only user of that module. Both draw from the same
law, keyed by `(seed, step, row, position)`; they do not give the same bits, except `corrupt`, which is
bit-identical.

`get_ops(backend, device)` resolves `"auto"`, `"rust"` or `"torch"` once per sampling call.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import torch

from ddm import _rng
from ddm._categorical import inverse_cdf
from ddm.errors import BackendError, InvalidArgument
from ddm.sampling import torch_steps
from ddm.sampling.proposal import Proposal, apply_to_step

__all__ = ["BACKENDS", "Ops", "RustOps", "TorchOps", "corrupt", "get_ops", "native_available"]

BACKENDS = ("auto", "rust", "torch")


def _native() -> Any:
    """The compiled core's torch wrapper, or None where `ddm._core` is not built."""
    try:
        return importlib.import_module("ddm.sampling._native")
    except ImportError:
        return None


def native_available() -> bool:
    """Whether the Rust core (`ddm._core`) can be imported."""
    return _native() is not None


def _rows_offset(rows: torch.Tensor) -> int:
    """The sequence index of row 0 (`rows = offset + arange(B)`)."""
    return int(rows[0]) if rows.numel() else 0


class Ops(ABC):
    """The backend operations a predictor calls (see the module docstring)."""

    name: str

    @abstractmethod
    def reverse_step(
        self,
        kind: str,
        graph: Any,
        x: torch.Tensor,
        log_score: torch.Tensor,
        level: torch.Tensor,
        *,
        seed: int,
        step: int,
        proposal: Proposal,
        seq_offset: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One grid step of `kind` (`torch_steps.step_probs`, then the proposal transform).

        Args:
            kind: `"euler"`, `"analytic"` or `"denoise"`.
            graph: the forward graph.
            x: int64 `[B, L]` tokens.
            log_score: `[B, L, dim]` log-scores at `x`.
            level: float64 `[B]`, the step's noise argument (`rate_dt`, `dsigma` or `sigma`).
            seed, step, seq_offset: the key `(seed, step, seq_offset + b, i)` of the draws.
            proposal: temperature / top-k / top-p of the move law.
            out: an int64 `[B, L]` CPU buffer the Rust step may write into (ignored by torch).

        Returns:
            int64 `[B, L]` new tokens on the device of `x`.
        """

    @abstractmethod
    def draw_masked(
        self,
        graph: Any,
        log_score: torch.Tensor,
        x: torch.Tensor,
        where: torch.Tensor,
        sigma: torch.Tensor,
        *,
        seed: int,
        step: int,
        rows: torch.Tensor,
        proposal: Proposal,
    ) -> torch.Tensor:
        """A real token at every position of `where` (MASK in `x`) from the transformed conditional
        `softmax(l_{0..N-1})`, keyed by `(seed, step, rows[b], i)`; `x` elsewhere. int64 `[B, L]`."""

    @abstractmethod
    def propose(
        self,
        graph: Any,
        log_score: torch.Tensor,
        x: torch.Tensor,
        *,
        seed: int,
        step: int,
        rows: torch.Tensor,
        proposal: Proposal,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A proposed token at every MASK of `x` and its statistics: int64 `[B, L]` (`x` where not MASK)
        and float64 `[B, L, 3]` (its probability, the top-1 minus top-2 margin and the entropy of the
        transformed conditional; 0 where not MASK)."""

    @abstractmethod
    def corrupt(
        self,
        graph: Any,
        x: torch.Tensor,
        sigma: torch.Tensor,
        seed: int,
        step: int = 0,
        seq_offset: int = 0,
        *,
        stream: int,
    ) -> torch.Tensor:
        """The forward corruption `x_sigma ~ p_{sigma|0}(. | x)` keyed by `(seed, stream, step,
        seq_offset + b, i)`; bit-identical on both backends. int64 `[B, L]`."""


class TorchOps(Ops):
    """The torch twin of every operation, on any device (float64 laws, inverse-CDF draws)."""

    name = "torch"

    def reverse_step(self, kind, graph, x, log_score, level, *, seed, step, proposal, seq_offset=0, out=None):
        probs = apply_to_step(torch_steps.step_probs(kind, graph, x, log_score, level), x, proposal)
        rows = torch.arange(x.shape[0], device=x.device, dtype=torch.int64) + seq_offset
        u = _rng.uniforms(seed, _rng.STREAMS["step"], step, rows, x.shape[1])  # (B, L)
        return inverse_cdf(probs, u)

    def draw_masked(self, graph, log_score, x, where, sigma, *, seed, step, rows, proposal):
        b_idx, i_idx = where.nonzero(as_tuple=True)  # (M,)
        if b_idx.numel() == 0:
            return x
        masked = torch.full((b_idx.numel(), 1), graph.mask_id, dtype=torch.int64, device=x.device)  # (M, 1)
        ls = log_score[b_idx, i_idx][:, None, :]  # (M, 1, dim)
        probs = torch_steps.denoise_step_probs(graph, masked, ls, sigma[b_idx])  # (M, 1, dim)
        probs = apply_to_step(probs, masked, proposal)[:, 0]  # (M, dim)
        u = _rng.uniforms(seed, _rng.STREAMS["masked_token"], step, rows, x.shape[1])[b_idx, i_idx]  # (M,)
        new = x.clone()
        new[b_idx, i_idx] = inverse_cdf(probs, u)
        return new

    def propose(self, graph, log_score, x, *, seed, step, rows, proposal):
        mask_id = graph.mask_id
        tokens = x.clone()
        stats = torch.zeros(*x.shape, 3, dtype=torch.float64, device=x.device)  # (B, L, 3)
        b_idx, i_idx = (x == mask_id).nonzero(as_tuple=True)  # (M,)
        if b_idx.numel() == 0:
            return tokens, stats
        masked = torch.full((b_idx.numel(), 1), mask_id, dtype=torch.int64, device=x.device)  # (M, 1)
        level = torch.ones(b_idx.numel(), dtype=torch.float64, device=x.device)
        probs = torch_steps.denoise_step_probs(graph, masked, log_score[b_idx, i_idx][:, None, :], level)
        probs = apply_to_step(probs, masked, proposal)[:, 0, :-1]  # (M, N): the real tokens
        u = _rng.uniforms(seed, _rng.STREAMS["masked_token"], step, rows, x.shape[1])[b_idx, i_idx]  # (M,)
        tok = inverse_cdf(probs, u)  # (M,)
        top = probs.topk(min(2, probs.shape[-1]), dim=-1).values  # (M, 2)
        margin = top[:, 0] - (top[:, 1] if top.shape[-1] > 1 else 0.0)
        entropy = torch.special.entr(probs).sum(-1)  # (M,)
        tokens[b_idx, i_idx] = tok
        stats[b_idx, i_idx] = torch.stack([probs.gather(1, tok[:, None])[:, 0], margin, entropy], -1)
        return tokens, stats

    def corrupt(self, graph, x, sigma, seed, step=0, seq_offset=0, *, stream):
        rows = torch.arange(x.shape[0], device=x.device, dtype=torch.int64) + seq_offset
        u = _rng.uniforms(seed, stream, step, rows, x.shape[1])  # (B, L)
        return graph.corrupt(x, sigma.to(x.device)[:, None], u)  # docs/math.md section 2


class RustOps(Ops):
    """Every operation in the compiled core (CPU tensors cross as NumPy views; results on `x`'s device)."""

    name = "rust"

    def __init__(self) -> None:
        native = _native()
        if native is None:
            raise BackendError(
                "backend='rust' needs the compiled core ddm._core (build it with `make build`)"
            )
        self._native = native

    def reverse_step(self, kind, graph, x, log_score, level, *, seed, step, proposal, seq_offset=0, out=None):
        proposal = proposal.resolved
        xc = x.detach().to("cpu").contiguous()
        ls = log_score.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (B, L, dim)
        level = level.detach().to(device="cpu", dtype=torch.float64).contiguous()  # (B,)
        if out is not None and out.data_ptr() == xc.data_ptr():
            raise InvalidArgument("out must not share memory with x")
        if proposal.neutral_for(graph.dim):
            new = self._native.reverse_step(
                kind, graph, xc, ls, level, seed, step, seq_offset=seq_offset, out=out
            )
        else:
            new = self._native.proposal_step(
                kind, graph, xc, ls, level, seed, step, proposal, seq_offset=seq_offset, out=out
            )
        return new.to(x.device)

    def draw_masked(self, graph, log_score, x, where, sigma, *, seed, step, rows, proposal):
        proposal = proposal.resolved
        # real token 0 elsewhere: the kernel leaves (and never reads) positions that are not MASK
        xin = torch.where(where, graph.mask_id, 0).to(device="cpu", dtype=torch.int64).contiguous()
        ls = log_score.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (B, L, dim)
        level = sigma.detach().to(device="cpu", dtype=torch.float64).contiguous()  # (B,)
        offset = _rows_offset(rows)
        if proposal.neutral_for(graph.dim):
            new = self._native.reverse_step("denoise", graph, xin, ls, level, seed, step, seq_offset=offset)
        else:
            new = self._native.proposal_step("denoise", graph, xin, ls, level, seed, step, proposal, offset)
        return torch.where(where, new.to(x.device), x)

    def propose(self, graph, log_score, x, *, seed, step, rows, proposal):
        proposal = proposal.resolved
        xc = x.detach().to("cpu").contiguous()
        ls = log_score.detach().to(device="cpu", dtype=torch.float32).contiguous()
        tokens, stats = self._native.propose(graph, xc, ls, seed, step, proposal, _rows_offset(rows))
        return tokens.to(x.device), stats.to(x.device)

    def corrupt(self, graph, x, sigma, seed, step=0, seq_offset=0, *, stream):
        return self._native.corrupt(graph, x, sigma, seed, step, seq_offset, stream=stream)


_TORCH = TorchOps()


def corrupt(
    graph: Any,
    x: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    step: int = 0,
    seq_offset: int = 0,
    *,
    stream: int,
) -> torch.Tensor:
    """`Ops.corrupt` on the backend `"auto"` picks for `x`'s device (the Rust core on the CPU where it is
    built): bit-identical either way, so callers (`Sampler.add_noise`, the keyed training loss) need not
    choose."""
    return get_ops("auto", x.device, graph).corrupt(graph, x, sigma, seed, step, seq_offset, stream=stream)


def get_ops(backend: Any = "auto", device: Any = "cpu", graph: Any = None) -> Ops:
    """The backend for tensors on `device`: `"auto"` (Rust on the CPU when the core is built and has a
    kernel for `graph`, else torch), `"rust"` or `"torch"`.

    Raises:
        InvalidArgument: an unknown backend name.
        BackendError: `"rust"` without the compiled core (or, at the first step, for a graph it has no
            kernel for).
    """
    if backend not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return _TORCH
    if backend == "rust":
        return RustOps()
    native = _native() if torch.device(device).type == "cpu" else None
    if native is not None and (graph is None or native.supports(graph)):
        return RustOps()
    return _TORCH
