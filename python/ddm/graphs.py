"""The forward noise processes of SEDD on one token, in closed form (torch).

A graph is a continuous-time Markov chain on `dim` states with rate matrix `Q`: `Q(y, x)` is the jump rate
`x -> y`, off-diagonal entries are non-negative and columns sum to 0 (Lou, Meng, Ermon 2024, SEDD, section
2). Over a total noise `sigma` the transition kernel is `exp(sigma Q)`, and every position of a sequence
is noised independently. Two graphs are provided (docs/math.md section 2):

- `Uniform(N)`: `dim = N`, `Q = (1/N) 1 1^T - I`; the limit law is uniform over the `N` ids.
- `Absorbing(N)`: `dim = N + 1`, every real token jumps at rate 1 to `MASK = N` (the last state), which
  never leaves; the limit law is the point mass at `MASK`.

A graph is open: a new one is a `Graph` subclass that defines its rates, kernel, corruption, config and
MASK id (`mask_id`, None without a MASK state), plus one `register` line, which is what `from_config`
reads. Nothing in ddm branches on the graph's class; code that needs the MASK state asks `graph.mask_id`.

Shapes follow SEDD's graph abstraction (docs/math.md section 6): tokens `i` are int64 of any shape `S`, a
noise level is a float, a 0-d tensor, or a tensor that broadcasts against `S` (`[B, 1]` per sequence for
`S = [B, L]`), and vectors over states have shape `S + (dim,)`. Every method is differentiable in the noise
level and the scores, works on any device, and computes in the floating dtype of the noise level or the
scores (a Python float takes torch's default dtype).
"""

from __future__ import annotations

import abc
import inspect
import json
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ddm.errors import InvalidArgument

__all__ = ["Graph", "Uniform", "Absorbing", "from_config", "log_expm1", "register"]

# A log-ratio below this is an underflowed ratio (exp gives exactly 0 in float32 and float64); clamping to
# it keeps `0 * log 0` terms finite, value and gradient, without changing any representable ratio.
_LOG_RHO_MIN = -1.0e4


# --------------------------------------------------------------------------------------------------------
# Argument checks and small numerical helpers
# --------------------------------------------------------------------------------------------------------


def _check_tokens(x: Any, dim: int, name: str) -> torch.Tensor:
    """Return `x` as int64 after checking that it is an integer tensor with ids in `[0, dim)`."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise InvalidArgument(f"{name} must be an integer tensor of token ids, got dtype {x.dtype}")
    if x.dtype != torch.int64:
        x = x.long()
    if x.numel() > 0:
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(x)).tolist())
        if lo < 0 or hi >= dim:
            raise InvalidArgument(
                f"{name} holds token ids in [{lo}, {hi}], outside [0, {dim - 1}] for this graph"
            )
    return x


def _as_noise(
    sigma: Any, name: str, *, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Return a noise level as a floating tensor after checking that it is finite and non-negative.

    A Python number becomes a 0-d tensor of `dtype` (torch's default dtype when `dtype` is None); an integer
    tensor is converted likewise; a floating tensor keeps its dtype. The result is moved to `device`.
    """
    if isinstance(sigma, bool):
        raise InvalidArgument(f"{name} must be a float or a floating tensor, got bool")
    if isinstance(sigma, (int, float)):
        if not math.isfinite(sigma) or sigma < 0:
            raise InvalidArgument(f"{name} must be finite and >= 0, got {sigma}")
        return torch.tensor(float(sigma), dtype=dtype or torch.get_default_dtype(), device=device)
    if not isinstance(sigma, torch.Tensor):
        raise InvalidArgument(f"{name} must be a float or a torch.Tensor, got {type(sigma).__name__}")
    if sigma.dtype == torch.bool or sigma.is_complex():
        raise InvalidArgument(f"{name} must be a real floating tensor, got dtype {sigma.dtype}")
    if not sigma.is_floating_point():
        sigma = sigma.to(dtype or torch.get_default_dtype())
    if device is not None and sigma.device != torch.device(device):
        sigma = sigma.to(device)
    if sigma.numel() > 0 and not bool(torch.all(torch.isfinite(sigma) & (sigma >= 0))):
        bad = sigma[~(torch.isfinite(sigma) & (sigma >= 0))].flatten()[0].item()
        raise InvalidArgument(f"{name} must be finite and >= 0 everywhere, found {bad}")
    return sigma


def _check_scores(score: Any, dim: int, name: str) -> torch.Tensor:
    if not isinstance(score, torch.Tensor):
        raise InvalidArgument(f"{name} must be a torch.Tensor, got {type(score).__name__}")
    if not score.is_floating_point():
        raise InvalidArgument(f"{name} must be a floating tensor, got dtype {score.dtype}")
    if score.dim() == 0 or score.shape[-1] != dim:
        raise InvalidArgument(f"{name} must have last dimension dim={dim}, got shape {tuple(score.shape)}")
    return score


def log_expm1(s: torch.Tensor) -> torch.Tensor:
    """`log(exp(s) - 1) = s + log(1 - e^{-s})` for `s >= 0`, in the dtype of `s`.

    Accurate for tiny and huge `s`: `1 - e^{-s}` is `-expm1(-s)`, in `(0, 1]`, so nothing overflows or
    cancels, and there is no branch. The one copy in ddm: the score network's absorbing scale, the score
    entropy (training and the bound) and the sampler's score cache all use it.
    """
    return s + torch.log(-torch.expm1(-s))


def _dse_term(l: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
    """One summand of the score entropy, `exp(l) - rho l + K(rho)` with `K(a) = a (log a - 1)`.

    docs/math.md section 4.

    Written as `rho (expm1(d) - d)` with `d = l - log rho`, which is >= 0 and free of the cancellation
    between `exp(l)`, `rho l` and `K(rho)` that the direct sum suffers when `rho` is large (sigma -> 0). For
    `d >= 1` the direct form `exp(l) - rho (1 + d)` is used instead, so that `rho expm1(d)` cannot overflow
    when `rho` is tiny; there the two parts differ by at most a factor of 4, so no accuracy is lost.
    """
    log_rho = log_rho.clamp(min=_LOG_RHO_MIN)
    rho = torch.exp(log_rho)
    d = l - log_rho
    d_small = d.clamp(max=1.0)
    small = rho * (torch.expm1(d_small) - d_small)
    big = torch.exp(l) - rho * (1.0 + d)
    return torch.where(d < 1.0, small, big)


def _noise_dtype(sigma: Any, *others: torch.Tensor) -> torch.dtype | None:
    """The dtype a computation on `sigma` and `others` should run in (None: let `_as_noise` choose)."""
    dtypes = [t.dtype for t in others]
    if isinstance(sigma, torch.Tensor) and sigma.is_floating_point():
        dtypes.append(sigma.dtype)
    if not dtypes:
        return None
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


# --------------------------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------------------------


class Graph(abc.ABC):
    """A forward CTMC on one token with `dim` states (SEDD section 2; docs/math.md sections 1, 2, 6).

    A subclass defines the rates, the kernel and its draws, the reverse-process quantities, `mask_id` and
    `to_config`; `register` makes `from_config` build it from its config's `"type"` (`kind`).

    Attributes:
        kind: the config `"type"` of the subclass (its registry key).
        vocab_size: the number `N` of real tokens, ids `0..N-1`.
        dim: the number of states (`N`, or `N + 1` with the MASK state).
        mask_id: the id of the MASK state, or None for a graph without one.
    """

    kind: ClassVar[str] = ""

    def __init__(self, vocab_size: int) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise InvalidArgument(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        self.vocab_size = vocab_size

    @property
    @abc.abstractmethod
    def mask_id(self) -> int | None:
        """The id of the absorbing MASK state, or None when the graph has none."""

    @property
    def absorbing(self) -> bool:
        """Whether the graph has an absorbing MASK state (`mask_id` is not None)."""
        return self.mask_id is not None

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The number of states of the chain."""

    # ---- the rate matrix --------------------------------------------------------------------------------
    @abc.abstractmethod
    def rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Column `i` of `Q`: the rates `Q(y, i)` out of state `i`.

        Args:
            i: int64 token ids of any shape `S`.
            dtype: floating dtype of the result (torch's default when None).

        Returns:
            `S + (dim,)` tensor.
        """

    @abc.abstractmethod
    def transp_rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Row `i` of `Q`: the rates `Q(i, y)` into state `i`, shape `S + (dim,)`."""

    def rate_matrix(self, *, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
        """The explicit `[dim, dim]` rate matrix with `Q[y, x]` the rate `x -> y` (for tests and oracles)."""
        cols = self.rate(torch.arange(self.dim, device=device), dtype=dtype)  # (dim, dim): row x = column x
        return cols.T.contiguous()

    # ---- the transition kernel exp(sigma Q) --------------------------------------------------------------
    @abc.abstractmethod
    def transition(self, i: torch.Tensor, sigma: Any) -> torch.Tensor:
        """Column `i` of `exp(sigma Q)`: the law `p(y | i)` after total noise `sigma`.

        Args:
            i: int64 token ids of shape `S`.
            sigma: total noise, a float or a tensor broadcasting against `S` (`[B, 1]` for `S = [B, L]`).

        Returns:
            `broadcast(S, sigma.shape) + (dim,)` tensor in the dtype of `sigma`.
        """

    @abc.abstractmethod
    def transp_transition(self, i: torch.Tensor, sigma: Any) -> torch.Tensor:
        """Row `i` of `exp(sigma Q)`: `exp(sigma Q)(i, y)`, shape `broadcast(S, sigma) + (dim,)`."""

    def sample_transition(
        self, i: torch.Tensor, sigma: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the forward corruption `x_sigma ~ p_{sigma|0}(. | i)` independently at every position.

        Args:
            i: int64 clean token ids of shape `S`.
            sigma: total noise broadcasting against `S`.
            generator: torch random generator on the device of `i`.

        Returns:
            int64 tensor of shape `broadcast(S, sigma.shape)`.
        """
        i, sigma = self._prep(i, sigma)
        shape = torch.broadcast_shapes(i.shape, sigma.shape)
        u = torch.rand(shape, generator=generator, device=i.device, dtype=torch.float64)
        return self.corrupt(i, sigma, u)

    def corrupt(
        self, i: torch.Tensor, sigma: Any, u: torch.Tensor, fresh: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The forward corruption `x_sigma ~ p_{sigma|0}(. | i)`, a function of given uniforms.

        docs/math.md section 2.

        The one corruption in ddm: `sample_transition` (torch generator), keyed training and
        `Sampler.add_noise` (hashed uniforms) all call it. This default inverts the CDF of
        `transition(i, sigma)` at `u` (exact for any graph); `Uniform` and `Absorbing` override it with
        their closed forms.

        Args:
            i: int64 clean token ids of shape `S`.
            sigma: total noise broadcasting against `S` (`[B, 1]` for `S = [B, L]`).
            u: float64 uniforms in `[0, 1)` of shape `broadcast(S, sigma.shape)`.
            fresh: optional int64 replacement ids, shaped like `u`, for a graph whose jumps land on a
                uniform id (`Uniform`); other graphs ignore it.

        Returns:
            int64 tensor shaped like `u`.
        """
        i, sigma = self._prep(i, sigma)
        law = self.transition(i, sigma.detach().to(torch.float64)).expand(*u.shape, self.dim)  # (S, dim)
        cdf = law.cumsum(-1)
        x = torch.searchsorted(cdf, u.to(torch.float64)[..., None], right=True)  # first state with cdf > u
        return x.squeeze(-1).clamp_(max=self.dim - 1)  # u at 1 - rounding: the last state

    @abc.abstractmethod
    def sample_limit(self, *batch: int, device: Any = None, generator: torch.Generator | None = None):
        """Draw int64 tokens of shape `batch` from the limit law of the chain."""

    # ---- reverse-process quantities ---------------------------------------------------------------------
    @abc.abstractmethod
    def staggered_score(self, score: torch.Tensor, dsigma: Any) -> torch.Tensor:
        """`exp(-dsigma Q) @ score` over the last axis (SEDD eq. 19, Tweedie tau-leaping).

        Args:
            score: ratios `s_y` (not logs), `[..., dim]`.
            dsigma: noise step broadcasting against `score.shape[:-1]`.

        Returns:
            `[..., dim]` tensor.
        """

    def reverse_rate(self, i: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Reverse rates out of `i`: `Q(i, y) s_y` for `y != i`, minus their sum at `y = i` (SEDD eq. 5).

        Args:
            i: int64 current tokens of shape `S`.
            score: ratios `s_y`, shape `S + (dim,)`.

        Returns:
            `S + (dim,)` tensor whose rows sum to 0, in the dtype of `score`.
        """
        score = _check_scores(score, self.dim, "score")
        i = _check_tokens(i, self.dim, "i")
        at_i = F.one_hot(i, self.dim).bool()  # (..., dim)
        off = (self.transp_rate(i, dtype=score.dtype) * score).masked_fill(at_i, 0.0)
        return off - at_i.to(score.dtype) * off.sum(dim=-1, keepdim=True)

    # ---- training and likelihood ------------------------------------------------------------------------
    @abc.abstractmethod
    def score_entropy(
        self, log_score: torch.Tensor, sigma: Any, x_t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        """Per-position denoising score entropy `DSE(l; x_t, x0)` (SEDD eq. 8; docs/math.md section 4).

        `DSE = sum_{y != x_t} Q(x_t, y) [exp(l_y) - rho_y l_y + K(rho_y)]`, with
        `rho_y = p_{sigma|0}(y | x0) / p_{sigma|0}(x_t | x0)` and `K(a) = a (log a - 1)`. The entry of `l`
        at `y = x_t` is ignored. It is >= 0 and 0 exactly at `l_y = log rho_y`.

        Args:
            log_score: log-scores `l`, `[B, L, dim]`.
            sigma: total noise broadcasting against `[B, L]` (`[B, 1]` per sequence).
            x_t: int64 noisy tokens `[B, L]`.
            x0: int64 clean tokens `[B, L]`.

        Returns:
            `[B, L]` tensor in the promoted dtype of `log_score` and `sigma`.
        """

    @abc.abstractmethod
    def prior_kl(self, x0: torch.Tensor, sigma: Any) -> torch.Tensor:
        """Per-position prior term of the likelihood bound for total noise `sigma`, `[B, L]`."""

    # ---- config -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable description `{"type": kind, ...}`, inverted by `ddm.graphs.from_config`."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Graph:
        """The graph of `config` (what `to_config` returns): its keys but `"type"` are the constructor's."""
        params = {k: v for k, v in config.items() if k != "type"}
        accepted = inspect.signature(cls).parameters
        extra = sorted(set(params) - set(accepted))
        if extra:
            raise InvalidArgument(f"unknown graph config keys {extra} for {cls.kind!r}")
        needed = [n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params]
        if needed:
            raise InvalidArgument(f"graph config {config!r} needs {needed}")
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.to_config(), sort_keys=True)))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "type")
        return f"{type(self).__name__}({params})"

    # ---- shared plumbing --------------------------------------------------------------------------------
    def _prep(self, i: Any, sigma: Any, name: str = "i") -> tuple[torch.Tensor, torch.Tensor]:
        i = _check_tokens(i, self.dim, name)
        sigma = _as_noise(sigma, "sigma", dtype=_noise_dtype(sigma), device=i.device)
        return i, sigma


class Uniform(Graph):
    """Uniform graph: `Q = (1/N) 1 1^T - I`, every token jumps to a uniform draw (docs/math.md section 2).

    This is the paper's `Q^uniform` divided by `N`, so that a token is resampled at rate 1.
    """

    kind = "uniform"

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        if vocab_size < 2:
            raise InvalidArgument(f"vocab_size must be >= 2 for the uniform graph, got {vocab_size}")

    @property
    def dim(self) -> int:
        return self.vocab_size

    @property
    def mask_id(self) -> None:
        """None: the uniform graph has no MASK state."""
        return None

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, "vocab_size": self.vocab_size}

    def rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        i = _check_tokens(i, self.dim, "i")
        dtype = dtype or torch.get_default_dtype()
        return 1.0 / self.vocab_size - F.one_hot(i, self.dim).to(dtype)  # (S, dim)

    def transp_rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.rate(i, dtype=dtype)  # Q is symmetric

    def transition(self, i: torch.Tensor, sigma: Any) -> torch.Tensor:
        # p(y | i) = e [y = i] + (1 - e) / N with e = exp(-sigma)
        i, sigma = self._prep(i, sigma)
        sig = sigma[..., None]
        e = torch.exp(-sig)
        off = -torch.expm1(-sig) / self.vocab_size  # (1 - e) / N without cancellation
        return torch.where(F.one_hot(i, self.dim).bool(), e + off, off)  # (S, dim)

    def transp_transition(self, i: torch.Tensor, sigma: Any) -> torch.Tensor:
        return self.transition(i, sigma)  # exp(sigma Q) is symmetric

    def sample_transition(
        self, i: torch.Tensor, sigma: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        i, sigma = self._prep(i, sigma)
        shape = torch.broadcast_shapes(i.shape, sigma.shape)
        u = torch.rand(shape, generator=generator, device=i.device, dtype=torch.float64)
        fresh = torch.randint(self.vocab_size, shape, generator=generator, device=i.device)
        return self.corrupt(i, sigma, u, fresh)

    def corrupt(
        self, i: torch.Tensor, sigma: Any, u: torch.Tensor, fresh: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Position `p` jumps when `u_p < 1 - exp(-sigma)`, to `fresh_p` when given, else to
        `floor(N u_p / (1 - exp(-sigma)))` (given a jump, `u_p / (1 - exp(-sigma))` is uniform on
        `[0, 1)`); see `Graph.corrupt` for the arguments."""
        i, sigma = self._prep(i, sigma)
        move = -torch.expm1(-sigma.detach().to(torch.float64))  # 1 - e^{-sigma}, the jump probability
        jump = u < move
        if fresh is None:
            n = self.vocab_size
            fresh = (u / move.clamp_min(1e-300) * n).floor().to(torch.int64).clamp_(max=n - 1)
        return torch.where(jump, fresh, i.expand(u.shape))

    def sample_limit(self, *batch: int, device: Any = None, generator: torch.Generator | None = None):
        return torch.randint(self.vocab_size, batch, generator=generator, device=device)

    def staggered_score(self, score: torch.Tensor, dsigma: Any) -> torch.Tensor:
        # exp(-d Q) = e^d I + (1 - e^d) (1/N) 1 1^T
        score = _check_scores(score, self.dim, "score")
        d = _as_noise(dsigma, "dsigma", dtype=_noise_dtype(dsigma, score), device=score.device)[..., None]
        total = score.sum(dim=-1, keepdim=True)
        return torch.exp(d) * score - torch.expm1(d) * total / self.vocab_size

    def score_entropy(
        self, log_score: torch.Tensor, sigma: Any, x_t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        log_score = _check_scores(log_score, self.dim, "log_score")
        x_t = _check_tokens(x_t, self.dim, "x_t")
        x0 = _check_tokens(x0, self.dim, "x0")
        dtype = _noise_dtype(sigma, log_score)
        sigma = _as_noise(sigma, "sigma", dtype=dtype, device=log_score.device).to(dtype)
        l = log_score.to(dtype)
        n = self.vocab_size
        # log r with r = esigm1 / (esigm1 + N); esigm1 + N = e^sigma + (N - 1)
        log_r = log_expm1(sigma) - torch.logaddexp(sigma, torch.full_like(sigma, math.log(n - 1)))
        log_r = torch.broadcast_to(log_r, x_t.shape)  # (B, L)
        same = x_t == x0
        # rho_y = r for all y when x_t = x0; else 1/r at y = x0 and 1 elsewhere (docs/math.md section 4)
        log_rho_rest = torch.where(same, log_r, torch.zeros_like(log_r))  # (B, L)
        terms = _dse_term(l, log_rho_rest[..., None])  # (B, L, dim)
        l_x0 = l.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
        t_x0 = torch.where(same, torch.zeros_like(l_x0), _dse_term(l_x0, -log_r))
        terms = terms.scatter(-1, x0[..., None], t_x0[..., None])
        terms = terms.scatter(-1, x_t[..., None], torch.zeros_like(t_x0)[..., None])  # y = x_t excluded
        return terms.sum(dim=-1) / n  # every Q(x_t, y) = 1/N

    def prior_kl(self, x0: torch.Tensor, sigma: Any) -> torch.Tensor:
        """`KL(p_{sigma|0}(. | x0) || Uniform(N))`, exact, `[B, L]` in the dtype of `sigma`.

        With `e = exp(-sigma)`: `p(x0) = e + (1 - e)/N`, `p(y) = (1 - e)/N` otherwise, so
        `KL = p(x0) log(1 + (N - 1) e) + (N - 1)/N (1 - e) log(1 - e)`.
        """
        x0, sigma = self._prep(x0, sigma, "x0")
        n = self.vocab_size
        e = torch.exp(-sigma)
        one_m_e = -torch.expm1(-sigma)
        p_x0 = e + one_m_e / n
        kl = p_x0 * torch.log1p((n - 1) * e) + (n - 1) / n * torch.special.xlogy(one_m_e, one_m_e)
        return torch.broadcast_to(kl, torch.broadcast_shapes(x0.shape, sigma.shape))


class Absorbing(Graph):
    """Absorbing (masking) graph: every real token jumps at rate 1 to `MASK = vocab_size`.

    docs/math.md section 2.

    `Q(MASK, j) = 1`, `Q(j, j) = -1` for `j != MASK`, and the MASK column is zero; `dim = vocab_size + 1`.
    """

    kind = "absorbing"

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        if vocab_size < 1:
            raise InvalidArgument(f"vocab_size must be >= 1 for the absorbing graph, got {vocab_size}")

    @property
    def dim(self) -> int:
        return self.vocab_size + 1

    @property
    def mask_id(self) -> int:
        """The id of the MASK state, `vocab_size` (the last state)."""
        return self.vocab_size

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, "vocab_size": self.vocab_size}

    def rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        # column i: -1 at i and +1 at MASK (zero for i = MASK, where both cancel)
        i = _check_tokens(i, self.dim, "i")
        dtype = dtype or torch.get_default_dtype()
        return F.one_hot(torch.full_like(i, self.mask_id), self.dim).to(dtype) - F.one_hot(i, self.dim).to(
            dtype
        )

    def transp_rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        # row i: -1 at i for i != MASK; row MASK: 1 for every y != MASK, 0 at MASK
        i = _check_tokens(i, self.dim, "i")
        dtype = dtype or torch.get_default_dtype()
        return (i == self.mask_id).to(dtype)[..., None] - F.one_hot(i, self.dim).to(dtype)

    def transition(self, i: torch.Tensor, sigma: Any) -> torch.Tensor:
        # column i of exp(sigma Q): e at i and 1 - e at MASK (i != MASK); MASK stays MASK
        i, sigma = self._prep(i, sigma)
        sig = sigma[..., None]
        shape = torch.broadcast_shapes(i.shape, sigma.shape)
        i = i.expand(shape)
        at_i = F.one_hot(i, self.dim).bool()
        at_mask = F.one_hot(torch.full_like(i, self.mask_id), self.dim).bool()
        e = torch.exp(-sig)
        out = torch.where(at_i, e, torch.where(at_mask, -torch.expm1(-sig), torch.zeros_like(e)))
        return torch.where((i == self.mask_id)[..., None], at_mask.to(out.dtype), out)  # (S, dim)

    def transp_transition(self, i: torch.Tensor, sigma: Any) -> torch.Tensor:
        # row i of exp(sigma Q): e at i (i != MASK); row MASK: 1 - e off MASK and 1 at MASK
        i, sigma = self._prep(i, sigma)
        sig = sigma[..., None]
        shape = torch.broadcast_shapes(i.shape, sigma.shape)
        i = i.expand(shape)
        at_i = F.one_hot(i, self.dim).bool()
        e = torch.exp(-sig)
        row_x = torch.where(at_i, e, torch.zeros_like(e))
        mask_col = torch.arange(self.dim, device=i.device) == self.mask_id  # (dim,)
        row_mask = torch.where(mask_col, torch.ones_like(e), -torch.expm1(-sig))
        return torch.where((i == self.mask_id)[..., None], row_mask, row_x)  # (S, dim)

    def corrupt(
        self, i: torch.Tensor, sigma: Any, u: torch.Tensor, fresh: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Position `p` jumps to MASK when `u_p < 1 - exp(-sigma)`; `fresh` is unused (`Graph.corrupt`)."""
        i, sigma = self._prep(i, sigma)
        move = -torch.expm1(-sigma.detach().to(torch.float64))  # 1 - e^{-sigma}, the jump probability
        return torch.where(u < move, torch.full_like(u, self.mask_id, dtype=torch.int64), i.expand(u.shape))

    def sample_limit(self, *batch: int, device: Any = None, generator: torch.Generator | None = None):
        return torch.full(batch, self.mask_id, dtype=torch.int64, device=device)

    def staggered_score(self, score: torch.Tensor, dsigma: Any) -> torch.Tensor:
        # exp(-d Q): column j != MASK has e^d at j and 1 - e^d at MASK; column MASK is 1 at MASK
        score = _check_scores(score, self.dim, "score")
        d = _as_noise(dsigma, "dsigma", dtype=_noise_dtype(dsigma, score), device=score.device)[..., None]
        real = score[..., :-1]
        out_real = torch.exp(d) * real
        out_mask = score[..., -1:] - torch.expm1(d) * real.sum(dim=-1, keepdim=True)
        lead = torch.broadcast_shapes(out_real.shape[:-1], out_mask.shape[:-1])
        return torch.cat([out_real.expand(*lead, self.vocab_size), out_mask.expand(*lead, 1)], dim=-1)

    def score_entropy(
        self, log_score: torch.Tensor, sigma: Any, x_t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        # Only MASK rows have jumps: Q(MASK, y) = 1 for y != MASK and rho_y = [y = x0] / esigm1(sigma), so
        # DSE = sum_{y != MASK} exp(l_y) - rho l_{x0} + K(rho); rows with x_t != MASK are exactly 0.
        log_score = _check_scores(log_score, self.dim, "log_score")
        x_t = _check_tokens(x_t, self.dim, "x_t")
        x0 = _check_tokens(x0, self.dim, "x0")
        dtype = _noise_dtype(sigma, log_score)
        sigma = _as_noise(sigma, "sigma", dtype=dtype, device=log_score.device).to(dtype)
        shape = torch.broadcast_shapes(x_t.shape, x0.shape, log_score.shape[:-1])
        x_t, x0 = x_t.expand(shape), x0.expand(shape)
        sigma = torch.broadcast_to(sigma, shape)
        l = log_score.to(dtype).expand(*shape, self.dim)
        out = torch.zeros(shape, dtype=dtype, device=log_score.device)
        rows = (x_t == self.mask_id).nonzero(as_tuple=True)
        lm, x0m, sm = l[rows], x0[rows], sigma[rows]  # (M, dim), (M,), (M,)
        # exp(l_y) over real tokens y != x0 (the x0 column gets its own stable term below)
        exps = torch.exp(lm[:, :-1].scatter(-1, x0m.clamp(max=self.mask_id - 1)[:, None], -math.inf))
        hit = x0m != self.mask_id  # a clean MASK (x0 = MASK) has rho = 0 everywhere
        rest = torch.where(hit, exps.sum(dim=-1), torch.exp(lm[:, :-1]).sum(dim=-1))
        l_x0 = lm.gather(-1, x0m[:, None]).squeeze(-1)
        t_x0 = _dse_term(l_x0, -log_expm1(sm))
        val = rest + torch.where(hit, t_x0, torch.zeros_like(t_x0))
        return out.index_put(rows, val)

    def prior_kl(self, x0: torch.Tensor, sigma: Any) -> torch.Tensor:
        """`KL(p_{sigma|0}(. | x0) || pi_sigma)`, exact, `[B, L]` in the dtype of `sigma`.

        The point mass at MASK cannot serve as the prior of a likelihood bound: it gives no mass to the
        `e^{-sigma}` chance that a token is still unmasked at noise `sigma`, so the KL against it is
        infinite. The bound is stated for the prior matched to the forward marginal,
        `pi_sigma = (1 - e^{-sigma}) delta_MASK + e^{-sigma} Uniform(N real tokens)`. For a real token
        `x0` the unmasked mass contributes `e^{-sigma} log(e^{-sigma} / (e^{-sigma} / N))` and the masked
        mass `log 1`, so `KL = e^{-sigma} log N`; for `x0 = MASK` it is `-log(1 - e^{-sigma})`.
        The ELBO holds for any prior, so this is a true upper bound. The sampler starts from all-MASK,
        which differs from `pi_sigma` by `e^{-sigma}` in total variation per position (1e-3 for
        `LogLinear(1e-3)` at t = 1).
        """
        x0, sigma = self._prep(x0, sigma, "x0")
        e = torch.exp(-sigma)
        kl_real = e * math.log(self.vocab_size) if self.vocab_size > 1 else torch.zeros_like(e)
        kl_mask = -torch.log(-torch.expm1(-sigma))  # -log(1 - e^{-sigma}), x0 = MASK only
        shape = torch.broadcast_shapes(x0.shape, sigma.shape)
        return torch.where(
            x0.expand(shape) == self.mask_id,
            torch.broadcast_to(kl_mask, shape),
            torch.broadcast_to(kl_real, shape),
        )


_GRAPHS: dict[str, type[Graph]] = {}


def register(cls: type[Graph]) -> type[Graph]:
    """Adds a `Graph` subclass to the registry of `from_config` under its `kind` (usable as a decorator).

    Raises:
        InvalidArgument: `cls` is not a `Graph` subclass, has no `kind`, or its `kind` names another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Graph)):
        raise InvalidArgument(f"register takes a Graph subclass, got {cls!r}")
    kind = getattr(cls, "kind", "")
    if not isinstance(kind, str) or not kind:
        raise InvalidArgument(f"{cls.__name__}.kind must be a non-empty string (its config 'type')")
    if _GRAPHS.get(kind, cls) is not cls:
        raise InvalidArgument(f"graph kind {kind!r} is already registered to {_GRAPHS[kind].__name__}")
    _GRAPHS[kind] = cls
    return cls


register(Uniform)
register(Absorbing)


def from_config(config: dict[str, Any]) -> Graph:
    """Build a graph from its config (`Graph.to_config`), `{"type": kind, ...}`, through the registry."""
    if not isinstance(config, dict):
        raise InvalidArgument(f"graph config must be a dict, got {type(config).__name__}")
    kind = config.get("type")
    if kind not in _GRAPHS:
        raise InvalidArgument(f"graph config 'type' must be one of {sorted(_GRAPHS)}, got {kind!r}")
    return _GRAPHS[kind].from_config(config)
