"""Training losses: the diffusion-weighted denoising score entropy (DWDSE) of SEDD (docs/math.md section 4).

`ddm.graphs.Graph.score_entropy` gives the per-position denoising score entropy in closed form; `dwdse`
turns it into the per-sequence Monte-Carlo estimate of the ELBO integral (Lou, Meng, Ermon 2024, eq. 10
and Theorem 3.6), and `score_entropy_bruteforce` is the literal sum over states with the explicit matrix
exponential, used as the oracle in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddm.graphs import Graph, _as_noise, _check_tokens
from ddm.schedules import Schedule

__all__ = [
    "MASK_COUNT_POWER",
    "block_loss",
    "block_times",
    "dwdse",
    "mask_count_cdf",
    "mask_count_times",
    "mask_counts",
    "masked_nelbo",
    "score_entropy_bruteforce",
    "until_eos",
]

LogScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dwdse(
    log_score_fn: LogScoreFn,
    graph: Graph,
    schedule: Schedule,
    x0: torch.Tensor,
    *,
    t: Any = None,
    eps_t: float = 1e-3,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
    x_t: torch.Tensor | None = None,
    scored: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence DWDSE loss `sigma(t) * sum_i DSE_i` in nats (SEDD eq. 10; docs/math.md section 4).

    Draws `t ~ U[eps_t, 1]` per sequence (unless `t` is given), corrupts `x0` to `x_t ~ p_{t|0}(. | x0)`,
    evaluates the score model at `(x_t, sigma_bar(t))`, and weights the summed score entropy by `sigma(t)`.
    Its expectation over `t` and `x_t` is the diffusion part of the bound on `-log p_0(x0)`.

    Args:
        log_score_fn: score model `f(x_t: int64 [B, L], sigma_bar: [B]) -> [B, L, dim]` log-scores.
        graph: the forward graph.
        schedule: the noise schedule.
        x0: int64 clean tokens `[B, L]`.
        t: optional times, a float or a `[B]` tensor in `[0, 1]`; drawn when None, in torch's default
            dtype.
        eps_t: the lower end of the time range, in `[0, 1)`.
        generator: torch random generator on the device of `x0` (used for `t` and for the corruption).
        u: optional float64 uniforms `[B, L]` for the corruption (`Graph.corrupt`), e.g. counter-based
            ones keyed per sequence (`ddm.training.objective.keyed_loss`); drawn from `generator`
            when None.
        x_t: optional corrupted tokens `[B, L]` the caller drew itself at `sigma_bar(t)` (the keyed Rust
            corruption of the training loop, bit-identical to `Graph.corrupt` at the same uniforms).
        scored: optional bool `[B, L]`: only these positions are noised and counted; the others stay
            clean (a context the loss is conditioned on, `ddm.eval.conditional_bound`).
        counted: optional bool `[B, L]`: of the noised positions, those counted in the loss (default all
            of `scored`): a prompt/response pair's EOS padding is noised but, with `supervise_padding`
            off, not counted (`ddm.data.pairs`).

    Returns:
        `[B]` loss per sequence, differentiable with respect to the model's output.
    """
    x0, sigma_bar, sigma, x_t = _noised(graph, schedule, x0, t, eps_t, generator, u, x_t, scored)
    log_score = log_score_fn(x_t, sigma_bar)  # (B, L, dim)
    if not isinstance(log_score, torch.Tensor) or tuple(log_score.shape) != (*x0.shape, graph.dim):
        got = tuple(log_score.shape) if isinstance(log_score, torch.Tensor) else type(log_score).__name__
        raise ValueError(
            f"log_score_fn must return a [B, L, dim] = {(*x0.shape, graph.dim)} tensor, got {got}"
        )
    dse = graph.score_entropy(log_score, sigma_bar[:, None], x_t, x0)  # (B, L)
    keep = _counted(scored, counted, x0)
    if keep is not None:
        dse = torch.where(keep, dse, torch.zeros_like(dse))
    return sigma.to(dse.dtype) * dse.sum(dim=-1)


def _counted(scored: torch.Tensor | None, counted: torch.Tensor | None, x0: torch.Tensor):
    """The positions a loss counts: `scored & counted` (either may be None: all), or None for all."""
    if counted is None:
        return scored
    if counted.dtype != torch.bool or counted.shape != x0.shape:
        raise ValueError(f"counted must be a bool tensor of shape {tuple(x0.shape)}")
    return counted if scored is None else scored & counted


def _noised(
    graph: Graph,
    schedule: Schedule,
    x0: torch.Tensor,
    t: Any,
    eps_t: float,
    generator: torch.Generator | None,
    u: torch.Tensor | None,
    x_t: torch.Tensor | None = None,
    scored: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked clean tokens, noise levels and corrupted tokens of a loss:
    `(x0, sigma_bar(t), sigma(t), x_t)`, `[B, L]`, `[B]`, `[B]`, `[B, L]` (the shared first half of
    `dwdse` and `masked_nelbo`)."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a ddm.graphs.Graph, got {type(graph).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a ddm.schedules.Schedule, got {type(schedule).__name__}")
    x0 = _check_tokens(x0, graph.dim, "x0")
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape [B, L], got {tuple(x0.shape)}")
    if isinstance(eps_t, bool) or not isinstance(eps_t, (int, float)) or not 0.0 <= eps_t < 1.0:
        raise ValueError(f"eps_t must be a float in [0, 1), got {eps_t!r}")
    batch = x0.shape[0]
    if t is None:
        u_t = torch.rand(batch, generator=generator, device=x0.device)
        t = eps_t + (1.0 - eps_t) * u_t  # (B,)
    else:
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t))
        t = t.to(x0.device)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        t = torch.broadcast_to(t, (batch,)) if t.dim() == 0 else t
        if tuple(t.shape) != (batch,):
            raise ValueError(f"t must be a scalar or have shape [B] with B={batch}, got {tuple(t.shape)}")
    sigma_bar, sigma = schedule(t)  # (B,), (B,)
    if x_t is not None:
        if u is not None:
            raise ValueError("give u (the corruption's uniforms) or x_t (its result), not both")
        x_t = _check_tokens(x_t, graph.dim, "x_t")
        if x_t.shape != x0.shape:
            raise ValueError(f"x_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(x_t.shape)}")
    elif u is None:
        x_t = graph.sample_transition(x0, sigma_bar[:, None], generator=generator)  # (B, L)
    else:
        x_t = graph.corrupt(x0, sigma_bar[:, None], u)  # (B, L)
    if scored is not None:
        if scored.dtype != torch.bool or scored.shape != x0.shape:
            raise ValueError(f"scored must be a bool tensor of shape {tuple(x0.shape)}")
        x_t = torch.where(scored, x_t, x0)  # the context stays clean
    return x0, sigma_bar, sigma, x_t


def masked_nelbo(
    log_prob_fn: LogScoreFn,
    graph: Graph,
    schedule: Schedule,
    x0: torch.Tensor,
    *,
    t: Any = None,
    eps_t: float = 1e-3,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
    x_t: torch.Tensor | None = None,
    scored: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence masked-diffusion NELBO in nats (MDLM, Sahoo et al. 2024; MD4; docs/math.md section 7).

    `sigma(t) / expm1(sigma_bar(t))` times `sum_{i: x_t^i = MASK} -log p(x0^i | x_t)`: with
    `alpha_t = exp(-sigma_bar(t))` the weight is MDLM's `-alpha'_t / (1 - alpha_t)`. For a SUBS model it is
    exactly the DWDSE of the model's closed-form score `p(y | x_t) / expm1(sigma_bar)` (the score entropy
    of that score at a MASK is `-log p(x0 | x_t) / expm1(sigma_bar)`), computed from the N log-probabilities
    instead of the score entropy over `dim` states; `t` and `x_t` are drawn exactly as in `dwdse`.

    Args:
        log_prob_fn: `f(x_t: int64 [B, L], sigma_bar: [B]) -> [B, L, N]`, log p(x0 | x_t)
            (`ScoreModel.log_probs`).
        graph: the absorbing graph.
        schedule: the noise schedule.
        x0: int64 clean tokens `[B, L]`, real ids.
        t, eps_t, generator, u, x_t, scored, counted: as in `dwdse`.

    Returns:
        `[B]` loss per sequence, differentiable with respect to the model's output.
    """
    if getattr(graph, "mask_id", None) is None:
        raise ValueError(f"masked_nelbo needs an absorbing graph, got {graph!r}")
    x0, sigma_bar, sigma, x_t = _noised(graph, schedule, x0, t, eps_t, generator, u, x_t, scored)
    logp = log_prob_fn(x_t, sigma_bar)  # (B, L, N)
    if not isinstance(logp, torch.Tensor) or tuple(logp.shape) != (*x0.shape, graph.vocab_size):
        got = tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__
        raise ValueError(
            f"log_prob_fn must return a [B, L, N] = {(*x0.shape, graph.vocab_size)} tensor, got {got}"
        )
    masked = x_t == graph.mask_id  # (B, L)
    keep = _counted(scored, counted, x0)
    if keep is not None:
        masked = masked & keep
    nll = -logp.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # unmasked positions: 0 (and never -inf * 0)
    weight = sigma.to(torch.float64) / torch.expm1(sigma_bar.to(torch.float64))  # (B,)
    return weight.to(nll.dtype) * nll.sum(dim=-1)


# The masked-count proposal of the "masks" designs (the bound's estimator in `ddm.eval.bound`, and the
# training times `t_sampling = "masks"`): `q(c) = c^-a / S(n)` on `1..n` masked positions. On the demo model
# the spread of a row's value falls roughly like c^-1/2 (few masked positions: few predictions, each
# weighted by n / c), so a = 1/2 is close to Neyman's allocation for the bound: it gave 1.6x less variance
# than a uniform q (a = 0), and 0.75 gave 1.4x.
MASK_COUNT_POWER = 0.5


def mask_count_cdf(length: int) -> torch.Tensor:
    """`S(c) = sum_{j <= c} j^-a` for `c = 1..length`, float64 `[length]`: the unnormalised CDF of `q`, so
    that `c = searchsorted(S, v S(n)) + 1` draws `c ~ q` on `1..n` from a uniform `v`."""
    return torch.cumsum(torch.arange(1, length + 1, dtype=torch.float64) ** -MASK_COUNT_POWER, 0)


def mask_counts(v: torch.Tensor, n: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`c ~ q` on `1..n` by inverse CDF at the uniforms `v` (0 where `n = 0`), and `S(n)`.

    `n` (int64, at most `length`) broadcasts with `v` (float64). Returns `(count, s_n)`: int64 the shape of
    `v`, and float64 the shape of `n`.
    """
    cum = mask_count_cdf(length)
    s_n = cum[(n - 1).clamp(min=0)]
    count = torch.searchsorted(cum, v * s_n).clamp(max=(n - 1).clamp(min=0)) + 1
    return torch.where(n > 0, count, torch.zeros_like(count)), s_n


def mask_count_times(
    schedule: Schedule, m: torch.Tensor, count: torch.Tensor, s_n: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The time and importance weight of draws `(c, m)` of the masks design (docs/math.md section 4.6).

    Under the absorbing forward process a sequence of n scored positions has `c ~ Binomial(n, m(t))` of
    them masked, `m(t) = 1 - e^{-sigma_bar(t)}`, as a uniformly random c-subset. A draw `c ~ q`, then
    `m ~ Beta(c, n - c + 1)` (the c-th smallest of n uniforms) and `t = m^{-1}(m)` has the weight
    `pi(t, c) / q(t, c) = S(n) expm1(sigma_bar) / (c^{1 - a} sigma)` against the forward law `pi` on
    `[0, 1] x {1..n}`, so `weight * f(t, x_t)` is an unbiased estimate of `int_0^1 E[f(t, x_t)] dt` for any
    integrand that vanishes without masks (the DWDSE and the masked NELBO do).

    Args:
        schedule: a schedule with `time_of` (LogLinear, Geometric).
        m: float64 masked fractions, any shape.
        count: int64 masked counts, the shape of `m` (0: no draw, weight 0).
        s_n: float64 `S(n)`, broadcasting with `m`.

    Returns:
        `(t, weight)`, float64, the shape of `m`: weight 0 where `count = 0` or where `m` lies outside
        `[m(0), m(1)]` (`pi = 0` there; `t` is then 1).
    """
    sb = -torch.log1p(-m)  # the noise level whose masked fraction is m
    one = torch.ones((), dtype=torch.float64)
    sb0, sb1 = float(schedule.total_noise(0 * one)), float(schedule.total_noise(one))
    active = (count > 0) & (m > 0) & (sb >= sb0) & (sb <= sb1)
    t = schedule.time_of(torch.where(active, sb, torch.full_like(sb, sb1)))
    sigma_bar, sigma = schedule(t)
    c = count.clamp(min=1).to(torch.float64)
    # pi(t, c) / q(t, c) = m(t) / (q(c) c m'(t)) with m'(t) = sigma e^{-sigma_bar}
    weight = s_n * torch.expm1(sigma_bar) / (c ** (1.0 - MASK_COUNT_POWER) * sigma)
    return t, torch.where(active, weight, torch.zeros_like(weight))


BlockFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def block_times(t: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Per-block times `[B, nb]` (`nb = ceil(L / B')`) spread to the positions, `[B, L]`."""
    return t.repeat_interleave(block_size, dim=1)[:, :length]


def until_eos(x0: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Bool `[B, L]`: the positions up to and including each row's first `eos_id` (all of a row without
    one), the `scored` mask of rows padded after their end of sequence: the padding does not count in a
    loss (dLLM#81), the EOS token does (the model must learn to stop)."""
    is_eos = (x0 == eos_id).to(torch.int64)  # (B, L)
    before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before each position
    return before == 0


def block_loss(
    fn: BlockFn,
    graph: Graph,
    schedule: Schedule,
    x0: torch.Tensor,
    block_size: int,
    *,
    loss: str = "masked",
    t: torch.Tensor | None = None,
    eps_t: float = 1e-3,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
    scored: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence block-diffusion loss in nats: the sum over blocks of each block's loss (BD3-LM's L_BD).

    Block b of `x0` (positions `b B' .. (b + 1) B' - 1`) gets its own time `t_b ~ U[eps_t, 1]` and is
    corrupted at `sigma_bar(t_b)`; the model scores every block given the clean blocks before it in one
    call, `fn(x_t, sigma_bar [B, L], x0)` (`ScoreModel.forward(..., x0=x0)`, BD3-LM's vectorised input).
    The loss of block b is `loss`'s integrand at `t_b` over its positions: `"masked"`, the MDLM NELBO
    `sigma(t_b) / expm1(sigma_bar(t_b)) sum -log p(x0^i | x_t, x0^{<b})` (`fn` returns `[B, L, N]`
    log-probabilities), or `"diffusion"`, the DWDSE `sigma(t_b) sum DSE_i` (`fn` returns `[B, L, dim]`
    log-scores). Its expectation over the times and `x_t` bounds `-log p(x0) = -sum_b log p(x0^b |
    x0^{<b})` up to the prior term, block by block (docs/math.md section 11). With `block_size >= L` it is
    `masked_nelbo` / `dwdse` of a model without blocks at the same `t` and `u`.

    Args:
        fn: `f(x_t: int64 [B, L], sigma_bar: [B, L], x0: int64 [B, L])`.
        graph: the absorbing graph.
        schedule: the noise schedule.
        x0: int64 clean tokens `[B, L]`, real ids.
        block_size: `B'`, >= 1.
        loss: `"masked"` or `"diffusion"`.
        t: optional times `[B, nb]`, one per block; drawn from `generator` in `[eps_t, 1]` when None.
        eps_t: the lower end of the time range, in `[0, 1)`.
        generator: torch generator for `t` and the corruption.
        u: optional float64 uniforms `[B, L]` of the corruption (`Graph.corrupt`).
        scored: optional bool `[B, L]`: only these positions are noised and counted (e.g. not the padding
            after an end-of-sequence token); the others stay clean.
        counted: optional bool `[B, L]`: of the noised positions, those counted (as in `dwdse`).

    Returns:
        `[B]` loss per sequence, differentiable with respect to the model's output.
    """
    if getattr(graph, "mask_id", None) is None:
        raise ValueError(f"block_loss needs an absorbing graph, got {graph!r}")
    if loss not in ("masked", "diffusion"):
        raise ValueError(f"loss must be 'masked' or 'diffusion', got {loss!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    x0, sigma_bar, sigma, x_t = _block_noised(graph, schedule, x0, block_size, t, eps_t, generator, u, scored)
    out = fn(x_t, sigma_bar, x0)
    return _block_terms(graph, loss, out, sigma_bar, sigma, x_t, x0, _counted(scored, counted, x0))


def _block_noised(
    graph: Graph,
    schedule: Schedule,
    x0: torch.Tensor,
    block_size: int,
    t: torch.Tensor | None,
    eps_t: float,
    generator: torch.Generator | None,
    u: torch.Tensor | None,
    scored: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked clean tokens, the per-position noise levels and the corrupted tokens of `block_loss`:
    `(x0, sigma_bar, sigma, x_t)`, each `[B, L]`, every block at its own time."""
    x0 = _check_tokens(x0, graph.dim, "x0")
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape [B, L], got {tuple(x0.shape)}")
    if isinstance(eps_t, bool) or not isinstance(eps_t, (int, float)) or not 0.0 <= eps_t < 1.0:
        raise ValueError(f"eps_t must be a float in [0, 1), got {eps_t!r}")
    B, L = x0.shape
    nb = -(-L // block_size)
    if t is None:
        t = eps_t + (1.0 - eps_t) * torch.rand(B, nb, generator=generator, device=x0.device)
    t = torch.as_tensor(t, device=x0.device)
    if tuple(t.shape) != (B, nb):
        raise ValueError(f"t must have shape [B, nb] = {(B, nb)} (one time per block), got {tuple(t.shape)}")
    sigma_bar, sigma = schedule(block_times(t, L, block_size))  # (B, L) each
    if u is None:
        x_t = graph.sample_transition(x0, sigma_bar, generator=generator)  # (B, L)
    else:
        x_t = graph.corrupt(x0, sigma_bar, u)  # (B, L)
    if scored is not None:
        if scored.dtype != torch.bool or scored.shape != x0.shape:
            raise ValueError(f"scored must be a bool tensor of shape {tuple(x0.shape)}")
        x_t = torch.where(scored, x_t, x0)
    return x0, sigma_bar, sigma, x_t


def _block_terms(
    graph: Graph,
    loss: str,
    out: Any,
    sigma_bar: torch.Tensor,
    sigma: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    scored: torch.Tensor | None,
) -> torch.Tensor:
    """`block_loss`'s sum over positions of the per-position loss of the model output `out`, `[B]`."""
    B, L = x0.shape
    if loss == "masked":
        want = (B, L, graph.vocab_size)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            raise ValueError(f"fn must return [B, L, N] = {want} log-probabilities for loss='masked'")
        masked = x_t == graph.mask_id
        if scored is not None:
            masked = masked & scored
        nll = -out.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
        nll = torch.where(masked, nll, torch.zeros_like(nll))
        weight = sigma.to(torch.float64) / torch.expm1(sigma_bar.to(torch.float64))  # (B, L)
        return (weight.to(nll.dtype) * nll).sum(-1)
    want = (B, L, graph.dim)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        raise ValueError(f"fn must return [B, L, dim] = {want} log-scores for loss='diffusion'")
    dse = graph.score_entropy(out, sigma_bar, x_t, x0)  # (B, L)
    if scored is not None:
        dse = torch.where(scored, dse, torch.zeros_like(dse))
    return (sigma.to(dse.dtype) * dse).sum(-1)


def score_entropy_bruteforce(
    graph: Graph, log_score: torch.Tensor, sigma: Any, x_t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The per-position score entropy as the literal sum (docs/math.md section 4), `exp(sigma Q)` explicit.

    `DSE = sum_{y != x_t} Q(x_t, y) [exp(l_y) - rho_y l_y + K(rho_y)]` with
    `rho_y = exp(sigma Q)(y, x0) / exp(sigma Q)(x_t, x0)`, computed in float64 with
    `torch.linalg.matrix_exp` for every position. Memory `O(B L dim^2)`: for small `dim` (tests) only.

    Args:
        graph: the forward graph.
        log_score: `[B, L, dim]` log-scores.
        sigma: total noise broadcasting against `[B, L]`.
        x_t: int64 noisy tokens `[B, L]`.
        x0: int64 clean tokens `[B, L]`.

    Returns:
        float64 `[B, L]`.
    """
    x_t = _check_tokens(x_t, graph.dim, "x_t")
    x0 = _check_tokens(x0, graph.dim, "x0")
    l = log_score.detach().to(torch.float64)
    sig = _as_noise(sigma, "sigma", dtype=torch.float64, device=l.device).detach().to(torch.float64)
    sig = torch.broadcast_to(sig, x_t.shape)  # (B, L)
    q = graph.rate_matrix(dtype=torch.float64, device=l.device)  # (dim, dim), q[y, x] = rate x -> y
    kernel = torch.linalg.matrix_exp(sig[..., None, None] * q)  # (B, L, dim, dim)
    col = kernel.gather(-1, x0[..., None, None].expand(*x0.shape, graph.dim, 1)).squeeze(-1)  # p(y | x0)
    rho = col / col.gather(-1, x_t[..., None])  # (B, L, dim)
    rates = q[x_t]  # (B, L, dim): row x_t of Q, Q(x_t, y)
    k = torch.special.xlogy(rho, rho) - rho  # K(rho), with K(0) = 0
    terms = rates * (torch.exp(l) - rho * l + k)
    off = torch.arange(graph.dim, device=l.device) != x_t[..., None]  # y != x_t
    return torch.where(off, terms, torch.zeros_like(terms)).sum(dim=-1)
