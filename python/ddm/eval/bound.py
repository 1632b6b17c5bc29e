"""The likelihood bound of a score model on held-out data (docs/math.md section 4; SEDD Theorem 3.6).

For a sequence x0 of L tokens,

    -log p_0(x0) <= integral_0^1 sigma(t) E_{x_t ~ p_{t|0}}[sum_i DSE_i(x_t, x0)] dt + sum_i prior_i,

plus, when `sigma_bar(0) > 0` (the Geometric schedule), the reconstruction term
`E_{x ~ p_{sigma_bar(0)|0}}[-log D(x0 | x)]` with `D` the denoising step's law (`reconstruction_nll`): the
integral covers only the noise levels from `sigma_bar(0)` up, and this term accounts for the step from
`x0` to `sigma_bar(0)`, so the estimate is a true upper bound on `-log p(x0)` for both graphs. It takes one
network call per block, with one draw of `x`.

The prior term is `graph.prior_kl(x0, sigma_bar(1))` summed over positions, exact (for the
absorbing graph, the KL to the prior matched to the forward marginal, `e^{-sigma_bar(1)} ln N` per token;
see its docstring). A zero-initialised absorbing model with the log-linear schedule, whose integrand is
`(1 - eps) ln N` per token, therefore gets exactly `ln N` in expectation: it is the uniform law.

The integral is estimated per sequence with K stratified times: `t_k = (k + 1 - u_k) / K` with
`u_k ~ U[0, 1)`, one time in each of the K strata `(k/K, (k+1)/K]`, and one draw of `x_t` at each; the
mean over k of `dwdse(t_k)` is an unbiased estimate of the integral. On the endpoint t = 0: the integral
starts at 0, not at the training cut `eps_t`; `sigma(0)` is finite for both schedules and so is the
integrand (for the absorbing graph, masked positions have probability ~ sigma_bar and weight
~ 1 / sigma_bar), so t is drawn from the half-open strata, which never give t = 0 exactly, and nothing is
cut off. The price is that in the first stratum the estimate is a rare large value (a position masked at
a tiny t), whose variance grows like log(1 / t_min); with K strata it is diluted by 1 / K. The standard
error is over sequences (held-out blocks are treated as independent draws; it includes the Monte-Carlo
noise of the estimate), and the seed fixes every draw.

Blocks are scored without context from neighbouring blocks, so this is the bound of the model as a
distribution over blocks of `seq_len` tokens.

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
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ddm.data import blocks, load_corpus
from ddm.io.checkpoint import read_config
from ddm.losses import block_loss, dwdse, masked_nelbo
from ddm.sampling.torch_steps import denoise_step_probs

__all__ = [
    "Bound",
    "SequenceBounds",
    "conditional_bound",
    "heldout_blocks",
    "likelihood_bound",
    "reconstruction_nll",
    "text_blocks",
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
        stderr: standard error of `nats_per_token` over sequences (NaN for one sequence).
        stderr_bits: the same in bits.
        diffusion_nats_per_token: the DWDSE integral part (noise levels `sigma_bar(0)` to `sigma_bar(1)`).
        prior_nats_per_token: the prior term.
        reconstruction_nats_per_token: the step from `x0` to noise level `sigma_bar(0)`,
            `E_{x ~ p_{sigma_bar(0)|0}}[-log D(x0 | x)]` with `D` the law of the denoising step; 0 when
            `sigma_bar(0) = 0` (the absorbing graph with `LogLinear`).
        tokens: tokens scored (`sequences * seq_len`).
        sequences: number of blocks.
        seq_len: tokens per block.
        num_t: stratified times per block.
        seed: the seed of the Monte-Carlo draws.
        unit: what a token is (`"char"`, `"byte"`, `"token"`, ...).
    """

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    stderr: float
    stderr_bits: float
    diffusion_nats_per_token: float
    prior_nats_per_token: float
    reconstruction_nats_per_token: float
    tokens: int
    sequences: int
    seq_len: int
    num_t: int
    seed: int
    unit: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; adds `bits_per_<unit>` (e.g. `bits_per_char`) when the unit is not "token"."""
        d = asdict(self)
        if self.unit != "token":
            d[f"bits_per_{self.unit}"] = self.bits_per_token
        return d

    def __str__(self) -> str:
        return (
            f"{self.bits_per_token:.4f} +- {self.stderr_bits:.4f} bits/{self.unit} "
            f"({self.nats_per_token:.4f} nats/{self.unit}, perplexity {self.perplexity:.3f}; "
            f"{self.sequences} blocks of {self.seq_len}, {self.num_t} t each)"
        )


def text_blocks(model: Any, text: str, seq_len: int | None = None) -> torch.Tensor:
    """Encodes `text` with `model.tokenizer` and cuts it into `[M, seq_len]` blocks.

    Raises ValueError for text with characters unknown to the tokenizer (named), or shorter than a block.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: pass token ids instead of text")
    seq_len = _check_seq_len(model, seq_len)
    if not text:
        raise ValueError("the evaluation text is empty")
    return blocks(np.asarray(tokenizer.encode(text), dtype=np.int64), seq_len, what="the evaluation text")


def heldout_blocks(checkpoint: str | os.PathLike, seq_len: int) -> torch.Tensor:
    """The held-out tail of the corpus a checkpoint was trained on, as `[M, seq_len]` blocks."""
    cfg = read_config(checkpoint)
    train = cfg["train"]
    data = train["data"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            corpus = load_corpus(
                data, Path(tmp), tokenizer=cfg["tokenizer"], val_fraction=train["val_fraction"]
            )
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}; the checkpoint was trained on it: pass the data explicitly"
            ) from None
        if corpus.n_val == 0:
            raise ValueError("the checkpoint was trained with val_fraction = 0: there is no held-out split")
        return corpus.val_blocks(seq_len).clone()


def _check_seq_len(model: Any, seq_len: int | None) -> int:
    model_len = getattr(model, "seq_len", None)
    if seq_len is None:
        if model_len is None:
            raise ValueError("seq_len is needed for a model without a seq_len attribute")
        return model_len
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if model_len is not None and seq_len > model_len:
        raise ValueError(f"seq_len {seq_len} is larger than the model's seq_len {model_len}")
    return seq_len


class _eval_mode:
    """Puts an `nn.Module` in eval mode for a block and restores its mode after (no-op for a callable)."""

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The terms of the bound per sequence, shared by `likelihood_bound` and `conditional_bound`.

    Returns `(diffusion [M], prior [M], reconstruction [M], integrand [M, K])`, float64 nats: the
    stratified-time DWDSE (or masked NELBO) integral, the prior term and the reconstruction term over the
    `scored` positions (all of them when None), with the draws of the module docstring.
    """
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    M, L = x.shape
    K = num_t
    subs = bool(getattr(getattr(model, "config", None), "subs", False))
    block_size = int(getattr(model, "block_size", 0) or 0)
    nb = -(-L // block_size) if block_size else 1  # blocks per sequence (1: no blocks)
    cpu = torch.Generator().manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    # (M, K, nb): every block its own stratified times (the same draws as without blocks when nb = 1)
    u = torch.rand(M, K, nb, generator=cpu, dtype=torch.float64)
    t = (torch.arange(K, dtype=torch.float64)[:, None] + 1.0 - u) / K  # t_k in (k/K, (k+1)/K]
    rows = torch.arange(M).repeat_interleave(K)  # (M K,) sequence of each row
    t_rows = t.reshape(M * K, nb)  # (M K, nb)
    values = torch.zeros(M * K, dtype=torch.float64)  # (M K,) integrand per (sequence, time)
    bar = tqdm(total=M * K, desc="eval", unit="row", dynamic_ncols=True) if progress else None
    try:
        with _eval_mode(model):
            for start in range(0, M * K, batch_size):
                r = rows[start : start + batch_size]
                x0 = x[r].to(device)  # (b, L)
                sc = None if scored is None else scored[r].to(device)  # (b, L)
                tt = t_rows[start : start + batch_size].to(device)  # (b, nb)
                if block_size:  # the bound of each block given the clean ones before it, summed
                    loss = "masked" if subs else "diffusion"
                    fn = _block_fn(model, subs)
                    vals = block_loss(fn, graph, schedule, x0, block_size, loss=loss, t=tt, generator=gen,
                                      scored=sc)  # fmt: skip
                elif subs:  # a masked-diffusion model: its NELBO, the same integral (docs/math.md section 7)
                    vals = masked_nelbo(
                        model.log_probs, graph, schedule, x0, t=tt[:, 0], generator=gen, scored=sc
                    )
                else:
                    vals = dwdse(model, graph, schedule, x0, t=tt[:, 0], generator=gen, scored=sc)  # (b,)
                values[start : start + len(r)] = vals.double().cpu()
                if bar is not None:
                    bar.update(len(r))
    finally:
        if bar is not None:
            bar.close()
    diffusion = torch.zeros(M, dtype=torch.float64).index_add_(0, rows, values) / K  # (M,)
    sigma_1 = schedule.total_noise(torch.tensor(1.0, dtype=torch.float64))
    prior_kl = graph.prior_kl(x, sigma_1).double()  # (M, L)
    prior = (prior_kl if scored is None else prior_kl * scored.to(torch.float64)).sum(-1)  # (M,)
    recon = torch.zeros(M, dtype=torch.float64)  # (M,) 0 when sigma_bar(0) = 0
    sigma_0 = float(schedule.total_noise(torch.tensor(0.0, dtype=torch.float64)))
    if sigma_0 > 0.0:
        # one draw of x ~ p_{sigma_bar(0)|0}(. | x0) per sequence, from its own stream (so the diffusion
        # part keeps its draws)
        gen_0 = torch.Generator(device=device).manual_seed(seed + 2)
        with _eval_mode(model):
            for start in range(0, M, batch_size):
                x0 = x[start : start + batch_size].to(device)  # (b, L)
                y = graph.sample_transition(x0, torch.tensor(sigma_0, dtype=torch.float64), generator=gen_0)
                sc = None if scored is None else scored[start : start + batch_size].to(device)
                if sc is not None:
                    y = torch.where(sc, y, x0)  # the context stays clean
                net = (
                    model if not block_size else functools.partial(model, x0=x0)
                )  # blocks see the clean past
                recon[start : start + len(x0)] = reconstruction_nll(net, graph, sigma_0, x0, y, sc).cpu()
    return diffusion, prior, recon, values.reshape(M, K)


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
) -> Bound:
    """Estimates the bound on `-log p(x0)` per token on held-out data (see the module docstring).

    Args:
        model: a score model (`ScoreModel`, or any callable `model(x, sigma_bar) -> [B, L, dim]` log-score
            with `graph` and `schedule` given).
        data: `[M, L]` token blocks, a 1-D token stream (cut into blocks of `seq_len`), or text (encoded
            with `model.tokenizer`).
        num_t: stratified times per sequence.
        batch_size: rows (sequence, time) per network call.
        seed: seeds the times and the corruption.
        seq_len: block length for a stream or text (default: the model's).
        max_sequences: use at most this many blocks (the first ones).
        graph: the graph (default `model.graph`).
        schedule: the schedule (default `model.schedule`).
        progress: show a progress bar.

    Returns:
        A `Bound`.
    """
    graph = graph if graph is not None else getattr(model, "graph", None)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if graph is None or schedule is None:
        raise ValueError("likelihood_bound needs a graph and a schedule (model.graph / model.schedule)")
    for name, v in (("num_t", num_t), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(data, str):
        x = text_blocks(model, data, seq_len)
    else:
        x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data)
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError(f"data must hold integer token ids, got dtype {x.dtype}")
        if x.dim() == 1:
            x = blocks(x.long(), _check_seq_len(model, seq_len))
        elif x.dim() == 2:
            _check_seq_len(model, x.shape[1])
        else:
            raise ValueError(f"data must be [M, L] blocks or a 1-D stream, got shape {tuple(x.shape)}")
    if max_sequences is not None:
        x = x[:max_sequences]
    x = x.long()
    if x.numel() == 0:
        raise ValueError("no data to evaluate")
    lo, hi = int(x.min()), int(x.max())
    vocab = graph.dim - 1 if getattr(graph, "mask_id", None) is not None else graph.dim
    if lo < 0 or hi >= vocab:
        raise ValueError(f"data holds token ids in [{lo}, {hi}], outside the model's vocabulary [0, {vocab})")

    M, L = x.shape
    K = num_t
    diffusion, prior, recon, _ = _bound_terms(model, graph, schedule, x, None, K, batch_size, seed, progress)
    per_seq = (diffusion + prior + recon) / L  # (M,) nats per token
    nats = float(per_seq.mean())
    stderr = float(per_seq.std(unbiased=True) / math.sqrt(M)) if M > 1 else math.nan
    ln2 = math.log(2)
    tokenizer = getattr(model, "tokenizer", None)
    return Bound(
        nats_per_token=nats,
        bits_per_token=nats / ln2,
        perplexity=math.exp(nats) if nats < 709.0 else math.inf,  # exp overflows a float beyond
        stderr=stderr,
        stderr_bits=stderr / ln2,
        diffusion_nats_per_token=float(diffusion.mean()) / L,
        prior_nats_per_token=float(prior.mean()) / L,
        reconstruction_nats_per_token=float(recon.mean()) / L,
        tokens=M * L,
        sequences=M,
        seq_len=L,
        num_t=K,
        seed=seed,
        unit=getattr(tokenizer, "unit", "token") if tokenizer is not None else "token",
    )


# ---------------------------------------------------------------------------------------------------
# The conditional bound: some positions clean (the context), the others scored
# ---------------------------------------------------------------------------------------------------


@dataclass
class SequenceBounds:
    """Per-sequence bounds of `conditional_bound`, in nats (sums over the scored positions, not means).

    Attributes:
        nats: `[M]` float64, the bound on `-log p(scored tokens | context tokens)` of each sequence.
        mc_stderr: `[M]` float64, the Monte-Carlo standard error of each (over its `num_t` time draws;
            NaN for `num_t = 1`).
        tokens: `[M]` int64, scored positions per sequence.
        num_t: stratified times per sequence.
        seed: the seed of the draws.
    """

    nats: torch.Tensor
    mc_stderr: torch.Tensor
    tokens: torch.Tensor
    num_t: int
    seed: int


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
) -> SequenceBounds:
    """The bound on `-log p(x[scored] | x[~scored])` per sequence: the continuation given the context.

    The positions with `scored` False are the context: they stay clean at every noise level, and only
    the scored positions are corrupted. Both forward processes act on each position independently, so
    the scored positions alone form a CTMC whose reverse the model drives with the context clamped (what
    `ddm.sample(prefix=...)` samples), and the bound of SEDD's Theorem 3.6 holds for it with the sums
    restricted to the scored positions: the DWDSE integral, the prior term and (when `sigma_bar(0) > 0`)
    the reconstruction term. For the absorbing graph that is exact conditioning on the clean context.

    With every position scored this is `likelihood_bound` per sequence, with the same draws: the same
    `seed`, `num_t` and `batch_size` on the same blocks give the same figures (`nats / L` is its
    per-sequence value, before the mean over sequences).

    The Monte-Carlo standard error of a sequence is the standard deviation of its `num_t` stratified
    integrand values over `sqrt(num_t)`, as if the times were independent uniforms. Its root mean square
    over many draws matches the true spread of the estimate (checked with exact scores in the tests), but
    the integrand is heavy-tailed (rare large values in the first stratum), so one sequence's figure is
    often too small: sum the variances over many sequences, as the lm_eval adapter does. It leaves out
    the single draw of the reconstruction term (zero for the absorbing graph with `LogLinear`).

    Args:
        model: the score model, `model(x, sigma_bar) -> [B, L, dim]` log-scores.
        x: int64 tokens `[M, L]` (context and scored positions together, in order).
        scored: bool `[M, L]` (or `[L]`, for every sequence): True at the positions to score.
        num_t: stratified times per sequence.
        batch_size: rows (sequence, time) per network call.
        seed: seeds the times and the corruption.
        graph: the graph (default `model.graph`).
        schedule: the schedule (default `model.schedule`).

    Returns:
        A `SequenceBounds`.
    """
    graph = graph if graph is not None else getattr(model, "graph", None)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if graph is None or schedule is None:
        raise ValueError("conditional_bound needs a graph and a schedule (model.graph / model.schedule)")
    for name, v in (("num_t", num_t), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"x must be integer tokens [M, L], got shape {tuple(x.shape)} dtype {x.dtype}")
    x = x.long()
    _check_seq_len(model, x.shape[1])
    scored = torch.as_tensor(scored)
    if scored.dtype != torch.bool:
        raise TypeError(f"scored must be a bool tensor, got dtype {scored.dtype}")
    if scored.dim() == 1 and scored.shape[0] == x.shape[1]:
        scored = torch.broadcast_to(scored, x.shape)
    if tuple(scored.shape) != tuple(x.shape):
        raise ValueError(f"scored must have shape {tuple(x.shape)} or [L], got {tuple(scored.shape)}")
    vocab = graph.dim - 1 if getattr(graph, "mask_id", None) is not None else graph.dim
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
        raise ValueError(f"x holds token ids outside the model's vocabulary [0, {vocab})")

    M, K = x.shape[0], num_t
    diffusion, prior, recon, per_t = _bound_terms(model, graph, schedule, x, scored, K, batch_size, seed)
    mc = per_t.std(dim=1, unbiased=True) / math.sqrt(K) if K > 1 else torch.full((M,), math.nan)
    return SequenceBounds(
        nats=diffusion + prior + recon,
        mc_stderr=mc.double(),
        tokens=scored.sum(-1),
        num_t=K,
        seed=seed,
    )
