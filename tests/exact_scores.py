"""Exact concrete scores of a known joint law over short sequences (helpers for the sampling tests).

`ExactScore(graph, p0)` is a score model `model(x, sigma) -> log-score` for the law `p0` over `N^L`
sequences: `p_sigma = (exp(sigma Q))^{(x) L} p0` is computed with the graph's closed-form transition, and
`l[b, i, y] = log p_sigma(x with x^i := y) - log p_sigma(x)` (0 at `y = x^i`), as in docs/math.md section 1.
"""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Graph
from ddm.sampling.ops import native_available


def correlated_law(n: int, length: int, seed: int = 0, weight: float = 0.7) -> torch.Tensor:
    """A law over `n^length` sequences with strong dependence between positions and full support.

    `weight` of the mass sits on the `n` constant sequences (unequally), the rest is a random law.

    Returns:
        float64 tensor of shape `[n] * length` summing to 1.
    """
    g = torch.Generator().manual_seed(seed)
    rest = torch.rand([n] * length, generator=g, dtype=torch.float64) + 0.2
    rest /= rest.sum()
    const = torch.zeros([n] * length, dtype=torch.float64)
    w = torch.arange(1, n + 1, dtype=torch.float64)
    w /= w.sum()
    for a in range(n):
        const[(a,) * length] = w[a]
    return weight * const + (1 - weight) * rest


class ExactScore:
    """The exact log-score of `p0` under `graph` (a plain callable; attributes only where asked).

    Args:
        graph: the forward graph; `p0` is over its `vocab_size` real tokens.
        p0: float64 tensor of shape `[N] * L`, the clean law.
    """

    def __init__(self, graph: Graph, p0: torch.Tensor) -> None:
        self.g = graph
        self.length = p0.dim()
        n, dim = graph.vocab_size, graph.dim
        assert tuple(p0.shape) == (n,) * self.length
        self.p0 = p0
        full = torch.zeros([dim] * self.length, dtype=torch.float64)
        full[(slice(0, n),) * self.length] = p0
        self.full = full
        self.strides = torch.tensor([dim ** (self.length - 1 - i) for i in range(self.length)])
        self.calls = 0

    def p_t(self, sigma: float) -> torch.Tensor:
        """`p_sigma` over `dim^L` states, `[dim] * L` float64."""
        dim = self.g.dim
        k = self.g.transition(torch.arange(dim), torch.tensor(float(sigma), dtype=torch.float64))  # (x0, y)
        out = self.full
        for i in range(self.length):
            out = torch.movedim(torch.tensordot(out, k, dims=([i], [0])), -1, i)
        return out

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        dim = self.g.dim
        x = x.cpu()
        sigma = sigma.detach().cpu().to(torch.float64).reshape(-1).expand(x.shape[0])
        out = torch.empty(*x.shape, dim, dtype=torch.float64)  # (B, L, dim)
        idx = (x * self.strides).sum(-1)  # (B,)
        ys = torch.arange(dim)
        for s in torch.unique(sigma):
            rows = sigma == s
            flat = torch.log(self.p_t(float(s)).reshape(-1))
            base = flat[idx[rows]]  # (b,)
            for i in range(self.length):
                alt = idx[rows][:, None] + (ys[None, :] - x[rows, i : i + 1]) * self.strides[i]  # (b, dim)
                out[rows, i] = flat[alt] - base[:, None]
        return out

    def conditional(self, fixed: dict[int, int]) -> torch.Tensor:
        """`p0(free | fixed)` as a flat `[N^(L - |fixed|)]` vector over the free positions in order."""
        index = tuple(fixed.get(i, slice(None)) for i in range(self.length))
        sub = self.p0[index]
        return (sub / sub.sum()).reshape(-1)


def empirical(samples: torch.Tensor, n: int, positions: list[int] | None = None) -> torch.Tensor:
    """Empirical law of the tokens at `positions` (all by default), as a flat `[n^k]` vector."""
    samples = samples.cpu()
    if positions is not None:
        samples = samples[:, positions]
    k = samples.shape[1]
    assert int(samples.min()) >= 0 and int(samples.max()) < n, "a sample holds MASK or an out-of-range id"
    strides = torch.tensor([n ** (k - 1 - i) for i in range(k)])
    counts = torch.bincount((samples * strides).sum(-1), minlength=n**k).to(torch.float64)
    return counts / counts.sum()


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def expected_noise_tv(p: torch.Tensor, n_samples: int) -> float:
    """Expected TV between `p` and an `n_samples` empirical law of it (normal approximation:
    `E|p_hat_k - p_k| = sqrt(2 p_k (1 - p_k) / (pi n))`)."""
    return 0.5 * float(torch.sqrt(2 * p * (1 - p) / (torch.pi * n_samples)).sum())


def chi2_pvalue(p_hat: torch.Tensor, p: torch.Tensor, n_samples: int) -> float:
    """Pearson chi-square p-value of `n_samples` draws with frequencies `p_hat` against `p`.

    States of probability 0 are left out of the statistic; a draw in one gives p-value 0.
    """
    from scipy.stats import chi2

    support = p > 0
    if bool((p_hat[~support] > 0).any()):
        return 0.0  # a draw in a state of probability 0
    stat = float((n_samples * (p_hat[support] - p[support]) ** 2 / p[support]).sum())
    return float(chi2.sf(stat, df=int(support.sum()) - 1))


def projected_law(
    model: ExactScore, schedule, fixed: dict[int, int], steps: int = 1000, eps: float = 1e-5
) -> torch.Tensor:
    """The law of the free positions under the projected reverse CTMC, computed without sampling.

    The continuous-time limit of the sampler with conditioning by projection: from the limit law (uniform
    graph only) at `t = 1` to `t = eps`, the free positions jump from `x` to `x` with `x^i := y` at rate
    `sigma(t) Q(x^i, y) s(x, t)[i, y]` (SEDD eq. 5), with the fixed positions held at their tokens.
    Propagated with `exp(G(t_mid) dt)` on a grid of `steps` intervals (midpoint rule, error O(dt^2)).
    The final denoising step, which removes `sigma_bar(eps)` ~ 1e-4 of noise, is left out.

    Returns:
        float64 `[N^k]` law over the free positions in order.
    """
    g = model.g
    assert not g.absorbing, "the projected law is only needed for the uniform graph"
    n, length = g.vocab_size, model.length
    free = [i for i in range(length) if i not in fixed]
    combos = torch.cartesian_prod(*[torch.arange(n)] * len(free)).reshape(-1, len(free))  # (S, k)
    seqs = torch.zeros(combos.shape[0], length, dtype=torch.int64)
    for i, tok in fixed.items():
        seqs[:, i] = tok
    seqs[:, free] = combos
    n_states = combos.shape[0]
    strides = torch.tensor([n ** (len(free) - 1 - j) for j in range(len(free))])
    q = torch.full((n_states,), 1.0 / n_states, dtype=torch.float64)
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    for k in range(steps):
        mid = 0.5 * (t[k] + t[k + 1])
        sig_bar, rate = schedule(mid)
        s = torch.exp(model(seqs, sig_bar.expand(n_states)))  # (S, L, dim)
        gen = torch.zeros(n_states, n_states, dtype=torch.float64)  # gen[to, from]
        for j, i in enumerate(free):
            for y in range(n):
                to = combos.clone()
                to[:, j] = y
                dest = (to * strides).sum(-1)
                moves = combos[:, j] != y
                src = torch.arange(n_states)[moves]
                gen[dest[moves], src] += float(rate) / n * s[moves, i, y]  # Q(x^i, y) = 1/N (uniform)
        gen -= torch.diag(gen.sum(0))
        q = torch.linalg.matrix_exp(gen * float(t[k] - t[k + 1])) @ q
    return q


def sampler_law(model: ExactScore, sampler) -> torch.Tensor:
    """The exact law of the discretised sampler's output (no sampling), flat over `dim^L` sequences.

    Every step of the sampler moves each position independently given the current sequence, so its
    transition matrix over the `dim^L` sequences is `T[x, x'] = prod_i probs(x)[i, x'^i]`, with `probs`
    the step's `[B, L, dim]` probabilities (`Sampler.step_probs`). Starting from the limit law and applying
    every step gives the law of `sample` for the same grid and predictor, with no noise, so the
    discretisation error `TV(law, p0)` can be measured exactly.

    Args:
        model: the exact score model.
        sampler: a `Sampler` on which `set_timesteps` has been called.
    """
    g = model.g
    dim, length = g.dim, model.length
    seqs = torch.cartesian_prod(*[torch.arange(dim)] * length).reshape(-1, length)  # (S, L), lexicographic
    n_states = seqs.shape[0]
    if g.absorbing:
        q = (seqs == g.dim - 1).all(-1).to(torch.float64)  # all MASK
    else:
        q = torch.full((n_states,), 1.0 / n_states, dtype=torch.float64)
    for k in range(len(sampler.timesteps)):
        probs = sampler.step_probs(model(seqs, sampler.noise_level(k, n_states)), k, seqs)  # (S, L, dim)
        trans = torch.ones(n_states, n_states, dtype=torch.float64)
        for i in range(length):
            trans *= probs[:, i, :][:, seqs[:, i]]  # (S, S'): probability that position i lands on x'^i
        q = q @ trans
    return q


@pytest.fixture(autouse=False)
def one_torch_thread():
    """Run a test with one torch intra-op thread (restored after): these tests use many small tensors,
    for which thread hand-offs cost more than they save, several-fold on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The backends a sampling test runs on: torch always, the Rust core where it is built.
needs_rust = pytest.mark.skipif(not native_available(), reason="ddm._core not built")
BACKENDS = ["torch", pytest.param("rust", marks=needs_rust)]
