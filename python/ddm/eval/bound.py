"""The likelihood bound of a score model on held-out data (docs/math.md section 4; SEDD Theorem 3.6).

For a sequence x0 of L tokens,

    -log p_0(x0) <= integral_0^1 sigma(t) E_{x_t ~ p_{t|0}}[sum_i DSE_i(x_t, x0)] dt + sum_i prior_i,

plus, when `sigma_bar(0) > 0` (the Geometric schedule), the reconstruction term
`E_{x ~ p_{sigma_bar(0)|0}}[-log D(x0 | x)]` with `D` the denoising step's law (`reconstruction_nll`): the
integral covers only the noise levels from `sigma_bar(0)` up, and this term accounts for the step from
`x0` to `sigma_bar(0)`, so the estimate is a true upper bound on `-log p(x0)` for both graphs. It takes one
network call per chunk, with one draw of `x`.

The prior term is `graph.prior_kl(x0, sigma_bar(1))` summed over positions, exact (for the
absorbing graph, the KL to the prior matched to the forward marginal, `e^{-sigma_bar(1)} ln N` per token;
see its docstring). A zero-initialised absorbing model with the log-linear schedule, whose integrand is
`(1 - eps) ln N` per token, therefore gets exactly `ln N` in expectation: it is the uniform law.

Two designs draw the K rows (network calls) per sequence that estimate the integral:

`"strata"` (the uniform graph; any graph): K stratified times `t_k = (k + 1 - u_k) / K` with
`u_k ~ U[0, 1)`, one in each stratum `(k/K, (k+1)/K]`, and one draw of `x_t` at each; the mean over k of
`dwdse(t_k)` is an unbiased estimate of the integral. On the endpoint t = 0: the integral starts at 0,
not at the training cut `eps_t`; `sigma(0)` is finite for both schedules and so is the integrand (for the
absorbing graph, masked positions have probability ~ sigma_bar and weight ~ 1 / sigma_bar), so t is drawn
from the half-open strata, which never give t = 0 exactly, and nothing is cut off. The price is that in
the first stratum the estimate is a rare large value (a position masked at a tiny t), whose variance
grows like log(1 / t_min); with K strata it is diluted by 1 / K.

`"masks"` (the absorbing graph with LogLinear or Geometric: the default there). Under the forward process a
sequence with n scored positions has `c ~ Binomial(n, m(t))` of them masked, `m(t) = 1 - e^{-sigma_bar(t)}`,
a uniformly random c-subset, and `f = sigma(t) sum_i DSE_i = 0` when `c = 0`. So with `pi(t, c) =
Binomial(c; n, m(t))` on `[0, 1] x {0..n}` the integral is `sum_{c >= 1} int pi(t, c) E[f | t, c] dt`, and
any proposal `q(t, c)` that covers `c >= 1` gives the unbiased importance-sampling estimate `E_q[(pi / q)
f]`. The rows draw `c ~ q(c) = c^{-1/2} / S(n)` (stratified inverse CDF), then `m ~ Beta(c, n - c + 1)` (the
c-th smallest of n uniforms), `t = m^{-1}(m)` (`Schedule.time_of`), and the window of c positions `[o, o +
c)` of a uniformly random order of the scored positions (o: the sum of the counts of the earlier rows, mod
n: the rows with few masks see different positions). Every window of a uniformly random order is a uniformly
random c-subset, so each row has the law q (rows are correlated, which leaves the mean alone). The Beta
density is `(c / m) Binomial(c; n, m)` and `dm/dt = sigma e^{-sigma_bar}`, so the weight is `pi / q = m /
(q(c) c sigma e^{-sigma_bar}) = S(n) expm1(sigma_bar) / (c^{1/2} sigma)`, and a row contributes `S(n)
c^{-1/2} sum_{masked} expm1(sigma_bar) DSE_i`: for a good model the average of `-log p(x0^i | x_t)` over the
masked positions, times `S(n) c^{1/2}`, with no heavy tail (the weight's `1 / m` cancels the rare masks of
small t exactly). A `m` outside `[m(0), m(1)]` has `pi = 0`: weight 0, and no network call. The rows form
two independent halves (each its own order and strata), so that `conditional_bound` can estimate each
sequence's Monte-Carlo error without bias. On the demo model this design reaches the Monte-Carlo error of
128 uniform strata with 4-6x fewer calls (BENCHMARKS.md).

Held-out text is cut into chunks of `seq_len` tokens (`text_chunks`, `heldout_chunks`). The standard
error is over sequences (chunks are treated as independent draws; it includes the Monte-Carlo noise of the
estimate), and the seed fixes every draw.

Chunks are scored without context from neighbouring chunks, so this is the bound of the model as a
distribution over chunks of `seq_len` tokens. ("Block" below is only ever a BD3-LM block.)

A block-diffusion model (`model.block_size = B' > 0`, BD3-LM) factorises a sequence into blocks of `B'`
tokens, `-log p(x0) = -sum_b log p(x0^b | x0^{<b})`, and each term has the bound above for the block
given the clean blocks before it (BD3-LM's bound L_BD; docs/math.md section 11). Every block gets its own K
stratified times and corruption, all blocks of a sequence are scored in one call (`ddm.losses.
block_loss`), and the sum over blocks is reported in the same keys: per token, a bound on the NLL of the
whole sequence. With `B' = seq_len` this is the figure of the same network without blocks, draw for draw.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ddm.data import blocks
from ddm.errors import InvalidArgument
from ddm.graphs import Absorbing
from ddm.io.rundata import heldout_blocks
from ddm.losses import block_loss, dwdse, mask_count_times, mask_counts, masked_nelbo
from ddm.sampling.torch_steps import denoise_step_probs

__all__ = [
    "Bound",
    "SequenceBounds",
    "conditional_bound",
    "heldout_blocks",
    "heldout_chunks",
    "likelihood_bound",
    "reconstruction_nll",
    "text_blocks",
    "text_chunks",
]


@dataclass
class Bound:
    """A likelihood bound with its standard error.

    `nats_per_token` estimates a true upper bound on the model's `-log p(x0)` per token for both graphs:
    the DWDSE integral, the prior term and, when `sigma_bar(0) > 0`, the reconstruction term.

    Attributes:
        nats_per_token: the bound on `-log p(x0) / L`, averaged over sequences.
        bits_per_token: the same in bits.
        perplexity: `exp(nats_per_token)`.
        stderr: standard error of `nats_per_token` over chunks; None for one chunk (no spread to measure).
        stderr_bits: the same in bits.
        diffusion_nats_per_token: the DWDSE integral part (noise levels `sigma_bar(0)` to `sigma_bar(1)`).
        prior_nats_per_token: the prior term.
        reconstruction_nats_per_token: the step from `x0` to noise level `sigma_bar(0)`,
            `E_{x ~ p_{sigma_bar(0)|0}}[-log D(x0 | x)]` with `D` the law of the denoising step; 0 when
            `sigma_bar(0) = 0` (the absorbing graph with `LogLinear`).
        tokens: tokens scored (`sequences * seq_len`).
        sequences: number of chunks.
        seq_len: tokens per chunk.
        num_t: rows (noise draws) per chunk.
        seed: the seed of the Monte-Carlo draws.
        unit: what a token is (`"char"`, `"byte"`, `"token"`, ...).
        design: how the rows were drawn: `"masks"` (stratified masked counts, importance-weighted times)
            or `"strata"` (stratified uniform times); see the module docstring.
        calls: the (chunk, time) rows the network evaluated (at most `sequences * num_t`: a `"masks"`
            row whose noise level falls outside the schedule's range has weight 0 and is not evaluated).
    """

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    stderr: float | None
    stderr_bits: float | None
    diffusion_nats_per_token: float
    prior_nats_per_token: float
    reconstruction_nats_per_token: float
    tokens: int
    sequences: int
    seq_len: int
    num_t: int
    seed: int
    unit: str
    design: str = "strata"
    calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; adds `bits_per_<unit>` (e.g. `bits_per_char`) when the unit is not "token"."""
        d = asdict(self)
        if self.unit != "token":
            d[f"bits_per_{self.unit}"] = self.bits_per_token
        return d

    def __str__(self) -> str:
        se = "n/a (one chunk)" if self.stderr_bits is None else f"{self.stderr_bits:.4f}"
        return (
            f"{self.bits_per_token:.4f} +- {se} bits/{self.unit} "
            f"({self.nats_per_token:.4f} nats/{self.unit}, perplexity {self.perplexity:.3f}; "
            f"{self.sequences} chunks of {self.seq_len}, {self.num_t} t each, design {self.design})"
        )


def text_chunks(model: Any, text: str, seq_len: int | None = None) -> torch.Tensor:
    """Encodes `text` with `model.tokenizer` and cuts it into `[M, seq_len]` chunks.

    Raises ValueError for text with characters unknown to the tokenizer (named), or shorter than a chunk.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InvalidArgument("the model has no tokenizer: pass token ids instead of text")
    seq_len = _check_seq_len(model, seq_len)
    if not text:
        raise InvalidArgument("the evaluation text is empty")
    return blocks(np.asarray(tokenizer.encode(text), dtype=np.int64), seq_len, what="the evaluation text")


text_blocks = text_chunks  # the earlier names, kept for callers
heldout_chunks = heldout_blocks  # the held-out split lives with the run (ddm.io.rundata)


def _check_seq_len(model: Any, seq_len: int | None) -> int:
    model_len = getattr(model, "seq_len", None)
    if seq_len is None:
        if model_len is None:
            raise InvalidArgument("seq_len is needed for a model without a seq_len attribute")
        return model_len
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise InvalidArgument(f"seq_len must be a positive integer, got {seq_len!r}")
    if model_len is not None and seq_len > model_len:
        raise InvalidArgument(f"seq_len {seq_len} is larger than the model's seq_len {model_len}")
    return seq_len


class _eval_mode:
    """Puts an `nn.Module` in eval mode inside a `with` and restores its mode after (no-op for a callable)."""

    def __init__(self, model: Any) -> None:
        self.model = model if isinstance(model, torch.nn.Module) else None

    def __enter__(self) -> None:
        self.was_training = self.model is not None and self.model.training
        if self.model is not None:
            self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        if self.was_training:
            self.model.train()


@torch.no_grad()
def reconstruction_nll(
    model: Any,
    graph: Any,
    sigma_0: float,
    x0: torch.Tensor,
    x: torch.Tensor,
    scored: torch.Tensor | None = None,
) -> torch.Tensor:
    """`-log D(x0 | x)` per sequence, `[B]` float64: the reconstruction term of the bound at one `x`.

    `D` is the law of the denoising step at noise level `sigma_0 = sigma_bar(0)` (`denoise_step_probs`,
    positions independent), a proper decoder, so `E_{x ~ p_{sigma_0|0}(. | x0)}[-log D(x0 | x)]` plus the
    DWDSE integral over `[sigma_bar(0), sigma_bar(1)]` plus the prior term bounds `-log p(x0)`
    (docs/math.md section 4). It is `+inf` where the denoiser gives `x0` probability 0.

    Args:
        model: the score model, `model(x, sigma) -> [B, L, dim]` log-scores.
        graph: the forward graph.
        sigma_0: the total noise at t = 0, > 0.
        x0: int64 clean tokens `[B, L]`.
        x: int64 tokens at noise level `sigma_0`, `[B, L]`.
        scored: optional bool `[B, L]`: only these positions count (the context is clean in `x`).
    """
    sigma = torch.full((x.shape[0],), float(sigma_0), dtype=torch.float64, device=x.device)  # (B,)
    probs = denoise_step_probs(graph, x, model(x, sigma), sigma)  # (B, L, dim) float64
    nll = -torch.log(probs.gather(-1, x0[..., None]).squeeze(-1))  # (B, L)
    if scored is not None:
        nll = torch.where(scored, nll, torch.zeros_like(nll))
    return nll.sum(-1)  # (B,)


def _block_fn(model: Any, subs: bool) -> Any:
    def fn(x_t: torch.Tensor, sigma_bar: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return model(x_t, sigma_bar, log_probs=subs, x0=x0)

    return fn


DESIGNS = ("auto", "masks", "strata")


def _resolve_design(design: str, graph: Any, schedule: Any, model: Any = None) -> str:
    """`"masks"` for the absorbing graph with a schedule that inverts its total noise, else `"strata"`;
    always `"strata"` for a block model (the masks design is derived for one noise level per sequence,
    not one per block)."""
    if design not in DESIGNS:
        raise InvalidArgument(f"design must be one of {DESIGNS}, got {design!r}")
    if int(getattr(model, "block_size", 0) or 0):
        if design == "masks":
            raise InvalidArgument("design='masks' is not defined for block models: use 'strata' (or 'auto')")
        return "strata"
    absorbing = isinstance(graph, Absorbing)  # the design is derived for its forward law
    try:
        schedule.time_of(torch.full((1,), 0.5, dtype=torch.float64))
        invertible = True
    except (AttributeError, NotImplementedError):
        invertible = False
    if design == "masks" and not (absorbing and invertible):
        raise InvalidArgument(
            "design='masks' needs the absorbing graph and a schedule with time_of (LogLinear, Geometric)"
        )
    if design == "auto":
        return "masks" if absorbing and invertible else "strata"
    return design


def _mask_layout(
    schedule: Any, n: torch.Tensor, K: int, L: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The draws of the `"masks"` design for sequences with `n [M]` scored positions (module docstring).

    Returns `(t, count, weight, offset)`, each `[M, K]`: the time, the number of masked positions, the
    importance weight (0 where the drawn noise level lies outside `[sigma_bar(0), sigma_bar(1)]`: no call)
    and the start of the row's window in the sequence's random order of its scored positions.
    """
    M = n.shape[0]
    # q(c) = c^-a / S(n) on 1..n, S(c) = sum_{j <= c} j^-a: more rows where few positions are masked (the
    # rows with the largest spread), drawn by stratified inverse CDF
    group, local, size = _groups(K)  # (K,) each: two independent half designs (the error estimate)
    v = (local + torch.rand(M, K, generator=gen, dtype=torch.float64)) / size  # (M, K) stratified per group
    count, s_n = mask_counts(v, n[:, None], L)  # (M, K), (M, 1) S(n)
    # m ~ Beta(c, n - c + 1): the c-th smallest of n uniforms (entries past n sort last)
    m = torch.empty(M, K, dtype=torch.float64)
    for start in range(0, M, 16):
        u = torch.rand(min(16, M - start), K, L, generator=gen, dtype=torch.float64)  # (m, K, L)
        u = torch.where(torch.arange(L) < n[start : start + 16, None, None], u, torch.full_like(u, 2.0))
        c = count[start : start + 16]
        m[start : start + 16] = u.sort(dim=-1).values.gather(-1, (c - 1).clamp(min=0)[..., None])[..., 0]
    t, weight = mask_count_times(schedule, m, count, s_n)  # (M, K) each
    # the windows of a group follow each other around its order of the positions
    offset = torch.zeros_like(count)
    for g in range(int(group.max()) + 1):
        cg = count[:, group == g]
        offset[:, group == g] = (torch.cumsum(cg, dim=1) - cg) % n.clamp(min=1)[:, None]
    return t, count, weight, offset


def _groups(K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of the `"masks"` design in two groups of `ceil(K / 2)` and `floor(K / 2)` (one for K = 1):
    `(group, index in the group, group size)`, each `[K]`; float64 but the group."""
    k1 = K - K // 2
    k = torch.arange(K)
    group = (k >= k1).long()
    local = torch.where(group == 0, k, k - k1).to(torch.float64)
    size = torch.where(group == 0, k1, K - k1).to(torch.float64)
    return group, local, size


@dataclass
class _Rows:
    """The Monte-Carlo draws of the bound: K rows (noise levels) per sequence, `[M, K, ...]`.

    Attributes:
        t: the times `[M, K, nb]` (nb: BD3-LM blocks per sequence, 1 without blocks).
        weight: the importance weights `[M, K]` (0: the row needs no network call).
        masks: the `"masks"` design's `(n [M], count [M, K], offset [M, K], rank [M, 2, L])`, else None.
    """

    t: torch.Tensor
    weight: torch.Tensor
    masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None


def _draw_rows(
    schedule: Any, scored: torch.Tensor | None, shape: tuple[int, int, int], nb: int, design: str, seed: int
) -> _Rows:
    """The times (and, for `"masks"`, the masked windows) of every row, from the CPU stream `seed`."""
    M, K, L = shape
    cpu = torch.Generator().manual_seed(seed)
    if design != "masks":
        # (M, K, nb): every block its own stratified times (the same draws as without blocks when nb = 1)
        u = torch.rand(M, K, nb, generator=cpu, dtype=torch.float64)
        t = (torch.arange(K, dtype=torch.float64)[:, None] + 1.0 - u) / K  # t_k in (k/K, (k+1)/K]
        return _Rows(t, torch.ones(M, K, dtype=torch.float64), None)
    n = torch.full((M,), L) if scored is None else scored.sum(-1)  # (M,) scored positions
    t, count, weight, offset = _mask_layout(schedule, n, K, L, cpu)  # (M, K) each
    # a uniformly random order of each sequence's scored positions: rank[j, i] is i's place in it
    keys = torch.rand(M, 2, L, generator=cpu, dtype=torch.float64)  # one order per group
    if scored is not None:
        keys = torch.where(scored[:, None, :], keys, torch.full_like(keys, 2.0))
    rank = keys.argsort(dim=-1).argsort(dim=-1)  # (M, 2, L)
    return _Rows(t[..., None], weight, (n, count, offset, rank))


def _masked_input(
    rows: _Rows, idx: torch.Tensor, r: torch.Tensor, x0: torch.Tensor, graph: Any, scored: torch.Tensor | None
) -> torch.Tensor:
    """The `"masks"` design's `x_t` of the flat rows `idx` (sequences `r`): row (j, k) masks the window
    `[offset, offset + count)` of sequence j's random order of its scored positions."""
    n, count, offset, rank = rows.masks
    K = rows.weight.shape[1]
    n_r, c_r, o_r = n[r], count.reshape(-1)[idx], offset.reshape(-1)[idx]
    rk = rank[r, _groups(K)[0][idx % K]]  # (b, L)
    window = (rk - o_r[:, None]) % n_r.clamp(min=1)[:, None] < c_r[:, None]  # (b, L)
    if scored is not None:
        window &= scored[r]
    return torch.where(window.to(x0.device), graph.mask_id, x0)  # (b, L)


def _row_values(
    model: Any,
    graph: Any,
    schedule: Any,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    x_t: torch.Tensor | None,
    scored: torch.Tensor | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """The integrand of the bound at the rows `x0 [b, L]`, times `t [b, nb]`: `[b]` nats."""
    subs = bool(getattr(getattr(model, "config", None), "subs", False))
    block_size = int(getattr(model, "block_size", 0) or 0)
    if block_size:  # the bound of each block given the clean ones before it, summed
        loss = "masked" if subs else "diffusion"
        fn = _block_fn(model, subs)
        return block_loss(fn, graph, schedule, x0, block_size, loss=loss, t=t, generator=gen, scored=scored)
    if subs:  # a masked-diffusion model: its NELBO, the same integral (docs/math.md section 7)
        return masked_nelbo(
            model.log_probs, graph, schedule, x0, t=t[:, 0], generator=gen, x_t=x_t, scored=scored
        )
    return dwdse(model, graph, schedule, x0, t=t[:, 0], generator=gen, x_t=x_t, scored=scored)  # (b,)


def _diffusion_values(
    model: Any,
    graph: Any,
    schedule: Any,
    x: torch.Tensor,
    scored: torch.Tensor | None,
    rows: _Rows,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[torch.Tensor, int]:
    """The weighted integrand of every (sequence, row), `[M, K]` float64, and the rows evaluated."""
    device = _device(model)
    M, K = rows.weight.shape
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    flat_w = rows.weight.reshape(-1)  # (M K,)
    live = torch.nonzero(flat_w > 0).squeeze(-1)  # the rows that need a network call
    seq_of = torch.arange(M).repeat_interleave(K)  # (M K,) sequence of each row
    t_rows = rows.t.reshape(M * K, -1)  # (M K, nb)
    values = torch.zeros(M * K, dtype=torch.float64)  # (M K,) weighted integrand per (sequence, time)
    bar = tqdm(total=len(live), desc="eval", unit="row", dynamic_ncols=True) if progress else None
    try:
        with _eval_mode(model):
            for start in range(0, len(live), batch_size):
                idx = live[start : start + batch_size]  # (b,) flat row indices
                r = seq_of[idx]
                x0 = x[r].to(device)  # (b, L)
                sc = None if scored is None else scored[r].to(device)  # (b, L)
                x_t = None if rows.masks is None else _masked_input(rows, idx, r, x0, graph, scored)
                vals = _row_values(
                    model, graph, schedule, x0, t_rows[idx].to(device), x_t=x_t, scored=sc, gen=gen
                )
                values[idx] = vals.double().cpu() * flat_w[idx]
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return values.reshape(M, K), len(live)


def _reconstruction(
    model: Any,
    graph: Any,
    schedule: Any,
    x: torch.Tensor,
    scored: torch.Tensor | None,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """The reconstruction term per sequence, `[M]` float64 (0 when `sigma_bar(0) = 0`): one draw of
    `x ~ p_{sigma_bar(0)|0}(. | x0)` per sequence, from its own stream (so the diffusion part keeps its
    draws)."""
    M = x.shape[0]
    recon = torch.zeros(M, dtype=torch.float64)  # (M,)
    sigma_0 = float(schedule.total_noise(torch.tensor(0.0, dtype=torch.float64)))
    if sigma_0 <= 0.0:
        return recon
    device = _device(model)
    block_size = int(getattr(model, "block_size", 0) or 0)
    gen_0 = torch.Generator(device=device).manual_seed(seed + 2)
    with _eval_mode(model):
        for start in range(0, M, batch_size):
            x0 = x[start : start + batch_size].to(device)  # (b, L)
            y = graph.sample_transition(x0, torch.tensor(sigma_0, dtype=torch.float64), generator=gen_0)
            sc = None if scored is None else scored[start : start + batch_size].to(device)
            if sc is not None:
                y = torch.where(sc, y, x0)  # the context stays clean
            net = model if not block_size else functools.partial(model, x0=x0)  # blocks see the clean past
            recon[start : start + len(x0)] = reconstruction_nll(net, graph, sigma_0, x0, y, sc).cpu()
    return recon


def _device(model: Any) -> torch.device:
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def _bound_terms(
    model: Any,
    graph: Any,
    schedule: Any,
    x: torch.Tensor,
    scored: torch.Tensor | None,
    num_t: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
    design: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The terms of the bound per sequence, shared by `likelihood_bound` and `conditional_bound`.

    Returns `(diffusion [M], prior [M], reconstruction [M], integrand [M, K], calls)`, float64 nats: the
    DWDSE (or masked NELBO) integral, the prior term and the reconstruction term over the `scored`
    positions (all of them when None), with the draws of the module docstring; `integrand` holds the
    weighted value of each (sequence, time) row (their mean over K is the integral) and `calls` the rows
    the network saw.
    """
    M, L = x.shape
    block_size = int(getattr(model, "block_size", 0) or 0)
    design = _resolve_design(design, graph, schedule, model)
    nb = -(-L // block_size) if block_size else 1  # BD3-LM blocks per sequence (1: no blocks)
    rows = _draw_rows(schedule, scored, (M, num_t, L), nb, design, seed)
    values, calls = _diffusion_values(model, graph, schedule, x, scored, rows, batch_size, seed, progress)
    sigma_1 = schedule.total_noise(torch.tensor(1.0, dtype=torch.float64))
    prior_kl = graph.prior_kl(x, sigma_1).double()  # (M, L)
    prior = (prior_kl if scored is None else prior_kl * scored.to(torch.float64)).sum(-1)  # (M,)
    recon = _reconstruction(model, graph, schedule, x, scored, batch_size, seed)
    return values.mean(dim=1), prior, recon, values, calls


@torch.no_grad()
def likelihood_bound(
    model: Any,
    data: torch.Tensor | np.ndarray | str,
    *,
    num_t: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    seq_len: int | None = None,
    max_sequences: int | None = None,
    graph: Any = None,
    schedule: Any = None,
    progress: bool = False,
    design: str = "auto",
) -> Bound:
    """Estimates the bound on `-log p(x0)` per token on held-out data (see the module docstring).

    Args:
        model: a score model (`ScoreModel`, or any callable `model(x, sigma_bar) -> [B, L, dim]` log-score
            with `graph` and `schedule` given).
        data: `[M, L]` token chunks, a 1-D token stream (cut into chunks of `seq_len`), or text (encoded
            with `model.tokenizer`).
        num_t: stratified times per sequence.
        batch_size: rows (sequence, time) per network call.
        seed: seeds the times and the corruption.
        seq_len: chunk length for a stream or text (default: the model's).
        max_sequences: use at most this many chunks (the first ones).
        graph: the graph (default `model.graph`).
        schedule: the schedule (default `model.schedule`).
        progress: show a progress bar (tqdm: rows done, rate, time left).
        design: `"masks"`, `"strata"`, or `"auto"` (`"masks"` for the absorbing graph with LogLinear or
            Geometric, else `"strata"`): how the times and corruptions are drawn (module docstring).

    Returns:
        A `Bound`.
    """
    graph = graph if graph is not None else getattr(model, "graph", None)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if graph is None or schedule is None:
        raise InvalidArgument("likelihood_bound needs a graph and a schedule (model.graph / model.schedule)")
    for name, v in (("num_t", num_t), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise InvalidArgument(f"{name} must be a positive integer, got {v!r}")
    if isinstance(data, str):
        x = text_chunks(model, data, seq_len)
    else:
        x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data)
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise InvalidArgument(f"data must hold integer token ids, got dtype {x.dtype}")
        if x.dim() == 1:
            x = blocks(x.long(), _check_seq_len(model, seq_len))
        elif x.dim() == 2:
            _check_seq_len(model, x.shape[1])
        else:
            raise InvalidArgument(f"data must be [M, L] chunks or a 1-D stream, got shape {tuple(x.shape)}")
    if max_sequences is not None:
        x = x[:max_sequences]
    x = x.long()
    if x.numel() == 0:
        raise InvalidArgument("no data to evaluate")
    lo, hi = int(x.min()), int(x.max())
    vocab = graph.vocab_size  # the real tokens (a MASK state is no data)
    if lo < 0 or hi >= vocab:
        raise InvalidArgument(
            f"data holds token ids in [{lo}, {hi}], outside the model's vocabulary [0, {vocab})"
        )

    M, L = x.shape
    K = num_t
    design = _resolve_design(design, graph, schedule, model)
    diffusion, prior, recon, _, calls = _bound_terms(
        model, graph, schedule, x, None, K, batch_size, seed, progress, design
    )
    per_seq = (diffusion + prior + recon) / L  # (M,) nats per token
    nats = float(per_seq.mean())
    stderr = float(per_seq.std(unbiased=True) / math.sqrt(M)) if M > 1 else None
    ln2 = math.log(2)
    tokenizer = getattr(model, "tokenizer", None)
    return Bound(
        nats_per_token=nats,
        bits_per_token=nats / ln2,
        perplexity=math.exp(nats) if nats < 709.0 else math.inf,  # exp overflows a float beyond
        stderr=stderr,
        stderr_bits=stderr / ln2 if stderr is not None else None,
        diffusion_nats_per_token=float(diffusion.mean()) / L,
        prior_nats_per_token=float(prior.mean()) / L,
        reconstruction_nats_per_token=float(recon.mean()) / L,
        tokens=M * L,
        sequences=M,
        seq_len=L,
        num_t=K,
        seed=seed,
        unit=getattr(tokenizer, "unit", "token") if tokenizer is not None else "token",
        design=design,
        calls=calls,
    )


# ---------------------------------------------------------------------------------------------------
# The conditional bound: some positions clean (the context), the others scored
# ---------------------------------------------------------------------------------------------------


@dataclass
class SequenceBounds:
    """Per-sequence bounds of `conditional_bound`, in nats (sums over the scored positions, not means).

    Attributes:
        nats: `[M]` float64, the bound on `-log p(scored tokens | context tokens)` of each sequence.
        mc_stderr: `[M]` float64, the Monte-Carlo standard error of each (from its `num_t` rows, see
            `conditional_bound`; NaN for `num_t = 1`).
        tokens: `[M]` int64, scored positions per sequence.
        num_t: stratified times per sequence.
        seed: the seed of the draws.
    """

    nats: torch.Tensor
    mc_stderr: torch.Tensor
    tokens: torch.Tensor
    num_t: int
    seed: int


def _check_block_context(model: Any, scored: torch.Tensor) -> None:
    """Refuses context after a scored block of a block model (BD3-LM): block b is scored given the clean
    blocks before it only, so context in a later block is invisible to it and the figure would not bound
    `-log p(scored | context)`. Context before the scored blocks, or inside a scored block, is fine."""
    block_size = int(getattr(model, "block_size", 0) or 0)
    if not block_size or scored.numel() == 0:
        return
    block = torch.arange(scored.shape[1]) // block_size  # (L,) block of each position
    big = torch.iinfo(torch.int64).max
    first_scored = torch.where(scored, block, big).amin(-1)  # (M,)
    last_context = torch.where(~scored, block, -1).amax(-1)  # (M,)
    bad = (last_context > first_scored).nonzero().flatten()
    if bad.numel():
        j = int(bad[0])
        first, last = int(first_scored[j]), int(last_context[j])
        raise InvalidArgument(
            f"conditional_bound on a block model (block_size={block_size}) with context after a scored block "
            f"(sequence {j}: block {first} is scored, block {last} holds context): "
            "a block sees only the clean blocks before it, so this would not bound -log p(scored | context). "
            "Score a suffix given a prefix, as ddm.sample conditions block models on a prefix only"
        )


@torch.no_grad()
def conditional_bound(
    model: Any,
    x: torch.Tensor,
    scored: torch.Tensor,
    *,
    num_t: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    graph: Any = None,
    schedule: Any = None,
    design: str = "auto",
) -> SequenceBounds:
    """The bound on `-log p(x[scored] | x[~scored])` per sequence: the continuation given the context.

    The positions with `scored` False are the context: they stay clean at every noise level, and only
    the scored positions are corrupted. Both forward processes act on each position independently, so
    the scored positions alone form a CTMC whose reverse the model drives with the context clamped (what
    `ddm.sample(prefix=...)` samples), and the bound of SEDD's Theorem 3.6 holds for it with the sums
    restricted to the scored positions: the DWDSE integral, the prior term and (when `sigma_bar(0) > 0`)
    the reconstruction term. For the absorbing graph that is exact conditioning on the clean context.

    With every position scored this is `likelihood_bound` per sequence, with the same draws: the same
    `seed`, `num_t` and `batch_size` on the same chunks give the same figures (`nats / L` is its
    per-sequence value, before the mean over sequences).

    The Monte-Carlo standard error of a sequence: with the `"masks"` design, from its two independent
    halves A and B (`|A - B| sqrt(k1 k2) / K`, an unbiased variance with one degree of freedom); with
    `"strata"`, the standard deviation of its `num_t` integrand values over `sqrt(num_t)`, as if the times
    were independent uniforms (the strata's integrand is heavy-tailed: rare large values in the first
    stratum). Either is right in root mean square over many draws (checked with exact scores in the
    tests) but noisy for one sequence: sum the variances over many sequences, as the lm_eval adapter does.
    It leaves out the single draw of the reconstruction term (zero for the absorbing graph with
    `LogLinear`).

    Args:
        model: the score model, `model(x, sigma_bar) -> [B, L, dim]` log-scores.
        x: int64 tokens `[M, L]` (context and scored positions together, in order).
        scored: bool `[M, L]` (or `[L]`, for every sequence): True at the positions to score.
        num_t: stratified times per sequence.
        batch_size: rows (sequence, time) per network call.
        seed: seeds the times and the corruption.
        graph: the graph (default `model.graph`).
        schedule: the schedule (default `model.schedule`).
        design: as in `likelihood_bound`.

    Returns:
        A `SequenceBounds`.
    """
    graph = graph if graph is not None else getattr(model, "graph", None)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if graph is None or schedule is None:
        raise InvalidArgument("conditional_bound needs a graph and a schedule (model.graph / model.schedule)")
    for name, v in (("num_t", num_t), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise InvalidArgument(f"{name} must be a positive integer, got {v!r}")
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise InvalidArgument(f"x must be integer tokens [M, L], got shape {tuple(x.shape)} dtype {x.dtype}")
    x = x.long()
    _check_seq_len(model, x.shape[1])
    scored = torch.as_tensor(scored)
    if scored.dtype != torch.bool:
        raise InvalidArgument(f"scored must be a bool tensor, got dtype {scored.dtype}")
    if scored.dim() == 1 and scored.shape[0] == x.shape[1]:
        scored = torch.broadcast_to(scored, x.shape)
    if tuple(scored.shape) != tuple(x.shape):
        raise InvalidArgument(f"scored must have shape {tuple(x.shape)} or [L], got {tuple(scored.shape)}")
    vocab = graph.vocab_size  # the real tokens (a MASK state is no data)
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
        raise InvalidArgument(f"x holds token ids outside the model's vocabulary [0, {vocab})")

    _check_block_context(model, scored)
    M, K = x.shape[0], num_t
    design = _resolve_design(design, graph, schedule, model)
    diffusion, prior, recon, per_t, _ = _bound_terms(
        model, graph, schedule, x, scored, K, batch_size, seed, design=design
    )
    if K == 1:
        mc = torch.full((M,), math.nan, dtype=torch.float64)
    elif design == "masks":
        # two independent half designs A and B (k1 and k2 rows): the estimate is (k1 A + k2 B) / K, whose
        # variance E[(A - B)^2] k1 k2 / K^2 estimates without bias (1 degree of freedom per sequence)
        group = _groups(K)[0]
        k1, k2 = int((group == 0).sum()), int((group == 1).sum())
        a, b = per_t[:, group == 0].mean(dim=1), per_t[:, group == 1].mean(dim=1)
        mc = (a - b).abs() * math.sqrt(k1 * k2) / K
    else:
        mc = per_t.std(dim=1, unbiased=True) / math.sqrt(K)
    return SequenceBounds(
        nats=diffusion + prior + recon,
        mc_stderr=mc.double(),
        tokens=scored.sum(-1),
        num_t=K,
        seed=seed,
    )
