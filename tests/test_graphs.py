"""Closed forms of ddm.graphs vs the explicit rate matrix and its exponential (docs/math.md section 2)."""

from __future__ import annotations

import math

import ddm.graphs
import pytest
import torch
from ddm.errors import BackendError, InvalidArgument
from ddm.graphs import Absorbing, Graph, Uniform, _check_scores, _dse_term, from_config
from ddm.sampling import Sampler, sample
from ddm.schedules import Geometric
from exact_scores import ExactScore, correlated_law, empirical, sampler_law, tv
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

F64 = torch.float64


def explicit_q(kind: str, n: int) -> torch.Tensor:
    """Q[y, x] = rate x -> y, written from docs/math.md section 2 independently of the library."""
    if kind == "uniform":
        return torch.full((n, n), 1.0 / n, dtype=F64) - torch.eye(n, dtype=F64)
    q = torch.zeros(n + 1, n + 1, dtype=F64)
    for j in range(n):
        q[n, j] = 1.0
        q[j, j] = -1.0
    return q


def make(kind: str, n: int) -> Graph:
    return Uniform(n) if kind == "uniform" else Absorbing(n)


kinds = st.sampled_from(["uniform", "absorbing"])
sizes = st.integers(min_value=2, max_value=7)
# total noise from 1e-7 to 60, log-uniform, plus the exact endpoints that matter
sigmas = st.one_of(
    st.floats(min_value=-7.0, max_value=math.log10(60.0)).map(lambda e: 10.0**e),
    st.sampled_from([0.0, 1e-6, 40.0, 50.0]),
)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-12, atol: float = 1e-14) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---- the rate matrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("n", [2, 3, 6])
def test_rate_matrix_matches_spec(kind: str, n: int) -> None:
    g = make(kind, n)
    q = explicit_q(kind, n)
    close(g.rate_matrix(), q, atol=0, rtol=1e-15)
    i = torch.arange(g.dim)
    close(g.rate(i, dtype=F64), q.T, atol=0, rtol=1e-15)  # row i of the result = column i of Q
    close(g.transp_rate(i, dtype=F64), q, atol=0, rtol=1e-15)
    close(q.sum(0), torch.zeros(g.dim, dtype=F64), atol=1e-15, rtol=0)  # columns sum to 0


def test_dims_and_mask_id() -> None:
    assert Uniform(7).dim == 7 and not Uniform(7).absorbing and Uniform(7).mask_id is None
    a = Absorbing(7)
    assert a.dim == 8 and a.mask_id == 7 == a.dim - 1 and a.absorbing


# ---- closed forms against matrix_exp ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(kind=kinds, n=sizes, sigma=sigmas)
def test_transition_closed_forms_equal_matrix_exp(kind: str, n: int, sigma: float) -> None:
    g = make(kind, n)
    kernel = torch.linalg.matrix_exp(sigma * explicit_q(kind, n))  # (dim, dim), kernel[y, x] = p(y | x)
    i = torch.arange(g.dim)
    s = torch.tensor(sigma, dtype=F64)
    close(g.transition(i, s), kernel.T)
    close(g.transp_transition(i, s), kernel)
    # columns of the kernel are probability laws
    close(g.transition(i, s).sum(-1), torch.ones(g.dim, dtype=F64))


@settings(max_examples=40, deadline=None)
@given(kind=kinds, n=sizes, a=sigmas, b=sigmas)
def test_semigroup(kind: str, n: int, a: float, b: float) -> None:
    g = make(kind, n)
    i = torch.arange(g.dim)

    def kernel(s: float) -> torch.Tensor:
        return g.transition(i, torch.tensor(s, dtype=F64)).T  # (dim, dim), [y, x]

    close(kernel(a + b), kernel(a) @ kernel(b))


@settings(max_examples=40, deadline=None)
@given(kind=kinds, n=sizes, d=st.floats(min_value=0.0, max_value=12.0), seed=st.integers(0, 2**31))
def test_staggered_score_equals_inverse_kernel(kind: str, n: int, d: float, seed: int) -> None:
    g = make(kind, n)
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(3, 4, g.dim, dtype=F64, generator=gen) * 5
    inv = torch.linalg.matrix_exp(-d * explicit_q(kind, n))  # (dim, dim)
    expected = score @ inv.T  # out_y = sum_j inv[y, j] s_j
    scale = math.exp(d) * score.abs().sum(-1, keepdim=True)  # entries are sums of terms of this size
    got = g.staggered_score(score, torch.tensor(d, dtype=F64))
    assert torch.all((got - expected).abs() <= 1e-13 * scale)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_staggered_score_per_sequence_noise(kind: str) -> None:
    g = make(kind, 4)
    score = torch.rand(2, 3, g.dim, dtype=F64)
    d = torch.tensor([[0.3], [1.7]], dtype=F64)  # (B, 1)
    got = g.staggered_score(score, d)
    for b in range(2):
        close(got[b], g.staggered_score(score[b], d[b, 0]))


@settings(max_examples=30, deadline=None)
@given(kind=kinds, n=sizes, seed=st.integers(0, 2**31))
def test_reverse_rate(kind: str, n: int, seed: int) -> None:
    g = make(kind, n)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(g.dim, (3, 5), generator=gen)
    s = torch.rand(3, 5, g.dim, dtype=F64, generator=gen) * 3
    rr = g.reverse_rate(x, s)
    close(rr.sum(-1), torch.zeros(3, 5, dtype=F64), atol=1e-14, rtol=0)
    q = explicit_q(kind, n)
    expected = q[x] * s  # Q(x, y) s_y
    off = torch.arange(g.dim) != x[..., None]
    close(torch.where(off, rr, 0.0), torch.where(off, expected, 0.0))


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_per_sequence_sigma_broadcasts(kind: str) -> None:
    g = make(kind, 5)
    x = torch.randint(g.vocab_size, (3, 4))
    sigma = torch.tensor([[0.1], [1.0], [3.0]], dtype=F64)
    out = g.transition(x, sigma)
    assert out.shape == (3, 4, g.dim) and out.dtype == F64
    for b in range(3):
        close(out[b], g.transition(x[b], float(sigma[b, 0])).to(F64), rtol=1e-6, atol=1e-7)
        close(out[b], g.transition(x[b], sigma[b, 0]))


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_dtypes_follow_sigma(kind: str) -> None:
    g = make(kind, 4)
    x = torch.randint(g.vocab_size, (2, 3))
    assert g.transition(x, 0.5).dtype == torch.get_default_dtype()
    assert g.transition(x, torch.tensor(0.5, dtype=torch.float32)).dtype == torch.float32
    assert g.transp_transition(x, torch.tensor(0.5, dtype=F64)).dtype == F64
    assert g.staggered_score(torch.rand(2, 3, g.dim, dtype=torch.float32), 0.5).dtype == torch.float32


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_transition_is_differentiable(kind: str) -> None:
    # d/dsigma exp(sigma Q) = Q exp(sigma Q)
    g = make(kind, 4)
    i = torch.arange(g.dim)
    sigma = torch.tensor(0.7, dtype=F64, requires_grad=True)
    weights = torch.rand(g.dim, g.dim, dtype=F64)
    (g.transition(i, sigma) * weights).sum().backward()
    q = explicit_q(kind, 4)
    expected = ((q @ torch.linalg.matrix_exp(0.7 * q)).T * weights).sum()
    close(sigma.grad, expected)
    score = torch.rand(2, g.dim, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda sc, s: g.staggered_score(sc, s), (score, sigma))
    assert torch.autograd.gradcheck(lambda s: g.transp_transition(i, s), (sigma,))


# ---- sampling -----------------------------------------------------------------------------------------


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a zero-probability state was drawn"
    expected = probs[keep] * counts.sum()
    return float(stats.chisquare(counts[keep].double().numpy(), expected.double().numpy()).pvalue)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
def test_sample_transition_law(kind: str, sigma: float) -> None:
    # chi-square goodness of fit at a fixed seed; the threshold 1e-4 fails a correct sampler 0.01% of seeds
    g = make(kind, 6)
    gen = torch.Generator().manual_seed(1234)
    for start in [0, 3]:
        x0 = torch.full((200, 500), start)
        xt = g.sample_transition(x0, torch.tensor(sigma, dtype=F64), generator=gen)
        counts = torch.bincount(xt.flatten(), minlength=g.dim)
        probs = g.transition(torch.tensor(start), torch.tensor(sigma, dtype=F64))
        assert chi2_pvalue(counts, probs) > 1e-4


def test_sample_transition_per_sequence_and_mask_stays() -> None:
    g = Absorbing(5)
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randint(5, (2, 20000), generator=gen)
    x0[:, :100] = g.mask_id
    sigma = torch.tensor([[0.2], [2.0]], dtype=F64)
    xt = g.sample_transition(x0, sigma, generator=gen)
    assert torch.all(xt[:, :100] == g.mask_id)
    assert torch.all((xt == x0) | (xt == g.mask_id))
    for b in range(2):
        frac = (xt[b, 100:] == g.mask_id).double().mean().item()
        p = 1 - math.exp(-sigma[b, 0].item())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / 19900)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_sample_transition_is_seeded(kind: str) -> None:
    g = make(kind, 9)
    x0 = torch.randint(9, (4, 50))
    a = g.sample_transition(x0, 0.8, generator=torch.Generator().manual_seed(3))
    b = g.sample_transition(x0, 0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.int64


def test_sample_limit_law() -> None:
    g = Uniform(7)
    x = g.sample_limit(300, 400, generator=torch.Generator().manual_seed(5))
    assert x.shape == (300, 400) and x.dtype == torch.int64
    assert chi2_pvalue(torch.bincount(x.flatten(), minlength=7), torch.full((7,), 1 / 7, dtype=F64)) > 1e-4
    a = Absorbing(7)
    assert torch.all(a.sample_limit(3, 4) == a.mask_id)


# ---- the prior term -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=sizes, sigma=st.floats(min_value=1e-3, max_value=30.0))
def test_prior_kl_uniform_bruteforce(n: int, sigma: float) -> None:
    g = Uniform(n)
    p = torch.linalg.matrix_exp(sigma * explicit_q("uniform", n))  # [y, x0]
    x0 = torch.arange(n)[None, :]
    expected = (p * torch.log(p * n)).sum(0)  # KL(p(. | x0) || 1/N) per x0
    got = g.prior_kl(x0, torch.tensor(sigma, dtype=F64))
    assert got.shape == (1, n)
    # the brute force's own absolute error: matrix_exp entries are off by ~1e-16 sigma, and log(N p)
    # multiplies that by N; the large-noise regime is checked against asymptotics below
    close(got[0], expected, rtol=1e-9, atol=1e-15 * n * max(sigma, 1.0))


@settings(max_examples=40, deadline=None)
@given(n=sizes, sigma=st.floats(min_value=1e-6, max_value=40.0))
def test_prior_kl_absorbing_bruteforce(n: int, sigma: float) -> None:
    # KL of the forward marginal against pi = (1 - e) delta_MASK + e Uniform(N), computed as the literal
    # sum over states from matrix_exp
    g = Absorbing(n)
    p = torch.linalg.matrix_exp(sigma * explicit_q("absorbing", n))  # [y, x0]
    e = math.exp(-sigma)
    pi = torch.full((n + 1,), e / n, dtype=F64)
    pi[n] = -math.expm1(-sigma)
    expected = torch.special.xlogy(p, p).sum(0) - (p * torch.log(pi)[:, None]).sum(0)
    x0 = torch.arange(n + 1)[None, :]
    got = g.prior_kl(x0, torch.tensor(sigma, dtype=F64))
    close(got[0], expected, rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("sigma", [20.0, 30.0, 40.0])
@pytest.mark.parametrize("n", [2, 7, 50257])
def test_prior_kl_large_noise_asymptotics(sigma: float, n: int) -> None:
    # where the brute force cancels to 0: with e = exp(-sigma), uniform KL = (N - 1) e^2 / 2 (1 + O(e)) and
    # absorbing e log N; the closed forms must keep full relative accuracy
    e = math.exp(-sigma)
    s = torch.tensor(sigma, dtype=F64)
    got_u = Uniform(n).prior_kl(torch.zeros(1, 1, dtype=torch.long), s).item()
    assert got_u == pytest.approx((n - 1) * e * e / 2, rel=1e-6)
    got_a = Absorbing(n).prior_kl(torch.zeros(1, 1, dtype=torch.long), s).item()
    assert got_a == pytest.approx(e * math.log(n), rel=1e-12)


# ---- config and validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("g", [Uniform(5), Absorbing(50257)])
def test_config_round_trip(g: Graph) -> None:
    cfg = g.to_config()
    assert cfg == {"type": "absorbing" if g.absorbing else "uniform", "vocab_size": g.vocab_size}
    assert from_config(cfg) == g and type(from_config(cfg)) is type(g)
    assert cfg["type"] == type(g).kind


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: Uniform(1), ValueError, "vocab_size"),
        (lambda: Absorbing(0), ValueError, "vocab_size"),
        (lambda: Uniform(3.0), TypeError, "vocab_size"),
        (lambda: from_config({"type": "gaussian", "vocab_size": 3}), ValueError, "type"),
        (lambda: from_config({"type": "uniform"}), ValueError, "vocab_size"),
        (lambda: from_config({"type": "uniform", "vocab_size": 3, "x": 1}), ValueError, "unknown"),
        (lambda: Uniform(4).transition(torch.tensor([0, 4]), 0.1), ValueError, "outside"),
        (lambda: Absorbing(4).transition(torch.tensor([-1]), 0.1), ValueError, "outside"),
        (lambda: Absorbing(4).transition(torch.tensor([0.0]), 0.1), TypeError, "integer"),
        (lambda: Uniform(4).transition(torch.tensor([0]), -0.1), ValueError, "sigma"),
        (
            lambda: Uniform(4).transition(torch.tensor([0]), torch.tensor([0.1, math.nan])),
            ValueError,
            "sigma",
        ),
        (lambda: Uniform(4).sample_transition(torch.tensor([0]), -1.0), ValueError, "sigma"),
        (lambda: Uniform(4).staggered_score(torch.rand(2, 4), -1.0), ValueError, "dsigma"),
        (lambda: Uniform(4).staggered_score(torch.rand(2, 5), 1.0), ValueError, "dim"),
        (
            lambda: Absorbing(4).score_entropy(
                torch.rand(2, 3, 4), 1.0, torch.zeros(2, 3).long(), torch.zeros(2, 3).long()
            ),
            ValueError,
            "dim",
        ),  # noqa: E501
        (lambda: Absorbing(4).prior_kl(torch.tensor([[5]]), 1.0), ValueError, "x0"),
    ],
)
def test_bad_input(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_cuda_matches_cpu(kind: str) -> None:
    g = make(kind, 6)
    x = torch.randint(g.vocab_size, (3, 5))
    sigma = torch.rand(3, 1, dtype=F64)
    close(g.transition(x.cuda(), sigma.cuda()).cpu(), g.transition(x, sigma))
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert g.sample_transition(x.cuda(), sigma.cuda(), generator=gen).device.type == "cuda"


# ---- a third graph: the random walk on a cycle, written only from its rate matrix -------------------------


class CycleWalk(Graph):
    """The random walk on the cycle `Z_N`: a token steps to either neighbour at rate 1/2.

    `Q = (S + S^T) / 2 - I` with `S` the cyclic shift, symmetric and circulant, so its kernel is diagonal
    in the Fourier basis: `exp(sigma Q)[y, x] = (1/N) sum_k exp(sigma lam_k) cos(2 pi k (y - x) / N)` with
    `lam_k = cos(2 pi k / N) - 1`. No MASK state; the limit law is uniform. The library sees only the
    `Graph` interface: the corruption and `sample_transition` are the base class's inverse-CDF draws.
    """

    kind = "test-cycle-walk"

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 for the cycle walk, got {vocab_size}")

    @property
    def dim(self) -> int:
        return self.vocab_size

    @property
    def mask_id(self) -> None:
        return None

    def to_config(self) -> dict:
        return {"type": self.kind, "vocab_size": self.vocab_size}

    def _circulant(self, offset: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """`exp(sigma Q)` at offsets `y - x` (any shape), noise broadcasting against `offset[..., 0]`."""
        n = self.vocab_size
        k = torch.arange(n, dtype=sigma.dtype, device=sigma.device)
        lam = torch.cos(2 * math.pi * k / n) - 1.0  # (N,)
        weight = torch.exp(sigma[..., None, None] * lam)  # (..., 1, N)
        return (torch.cos(2 * math.pi * k * offset[..., None] / n) * weight).sum(-1) / n

    def rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        n = self.vocab_size
        d = (torch.arange(n, device=i.device) - i[..., None]) % n  # (S, N)
        half = ((d == 1) | (d == n - 1)).to(dtype or torch.get_default_dtype()) / 2
        return half - (d == 0).to(half.dtype)

    def transp_rate(self, i: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.rate(i, dtype=dtype)  # symmetric

    def transition(self, i: torch.Tensor, sigma) -> torch.Tensor:
        i, sigma = self._prep(i, sigma)
        n = self.vocab_size
        d = ((torch.arange(n, device=i.device) - i[..., None]) % n).to(sigma.dtype)  # (S, N)
        return self._circulant(d, sigma)

    def transp_transition(self, i: torch.Tensor, sigma) -> torch.Tensor:
        return self.transition(i, sigma)  # symmetric

    def sample_limit(self, *batch: int, device=None, generator=None):
        return torch.randint(self.vocab_size, batch, generator=generator, device=device)

    def staggered_score(self, score: torch.Tensor, dsigma) -> torch.Tensor:
        score = _check_scores(score, self.dim, "score")
        d = torch.as_tensor(dsigma, dtype=score.dtype)
        n = self.vocab_size
        ar = torch.arange(n)
        offset = ((ar[:, None] - ar[None, :]) % n).to(score.dtype)  # (y, x)
        k = self._circulant(offset, -d[..., None])  # (..., N, N) exp(-d Q)
        return (k @ score[..., None]).squeeze(-1)

    def score_entropy(self, log_score, sigma, x_t, x0) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=log_score.dtype)
        p = self.transition(x0, sigma)  # (B, L, N): p(y | x0)
        log_rho = torch.log(p) - torch.log(p.gather(-1, x_t[..., None]))
        q = self.transp_rate(x_t, dtype=log_score.dtype)  # Q(x_t, y)
        terms = q * _dse_term(log_score, log_rho)
        return terms.scatter(-1, x_t[..., None], 0.0).sum(-1)

    def prior_kl(self, x0: torch.Tensor, sigma) -> torch.Tensor:
        p = self.transition(x0, sigma)
        return (p * torch.log(p * self.vocab_size)).sum(-1)


def cycle_q(n: int) -> torch.Tensor:
    """The cycle walk's `Q[y, x]`, written out entry by entry."""
    q = -torch.eye(n, dtype=F64)
    for x in range(n):
        q[(x + 1) % n, x] += 0.5
        q[(x - 1) % n, x] += 0.5
    return q


@pytest.fixture
def cycle_registered():
    ddm.graphs.register(CycleWalk)
    yield CycleWalk
    ddm.graphs._GRAPHS.pop(CycleWalk.kind)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_third_graph_kernel_is_matrix_exp_of_its_rates(n: int) -> None:
    g = CycleWalk(n)
    close(g.rate_matrix(), cycle_q(n), atol=0, rtol=1e-15)
    i = torch.arange(n)
    for sigma in (0.0, 1e-4, 0.3, 2.0, 15.0):
        want = torch.linalg.matrix_exp(sigma * cycle_q(n))  # [y, x]
        close(g.transition(i, torch.tensor(sigma, dtype=F64)), want.T, rtol=1e-12, atol=1e-14)
        close(g.transp_transition(i, torch.tensor(sigma, dtype=F64)), want, rtol=1e-12, atol=1e-14)
    score = torch.rand(4, n, dtype=F64, generator=torch.Generator().manual_seed(0))
    inv = torch.linalg.matrix_exp(-0.4 * cycle_q(n))
    close(g.staggered_score(score, 0.4), score @ inv.T, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
def test_third_graph_corruption_draws_the_exact_law(sigma: float) -> None:
    # the base class's inverse-CDF corruption: chi-square at a fixed seed against matrix_exp's column
    g = CycleWalk(6)
    gen = torch.Generator().manual_seed(99)
    exact = torch.linalg.matrix_exp(sigma * cycle_q(6))  # [y, x]
    for start in [0, 4]:
        xt = g.sample_transition(torch.full((200, 500), start), torch.tensor(sigma, dtype=F64), generator=gen)
        assert chi2_pvalue(torch.bincount(xt.flatten(), minlength=6), exact[:, start]) > 1e-4
    x0 = torch.tensor([[0, 1, 2], [3, 4, 5]])
    u = torch.tensor([[0.0, 0.5, 0.999999], [0.25, 0.75, 0.1]], dtype=F64)
    cdf = torch.linalg.matrix_exp(0.7 * cycle_q(6)).T[x0].cumsum(-1)  # (2, 3, N) per start
    want = (cdf <= u[..., None]).sum(-1)  # the first state whose cdf exceeds u
    assert torch.equal(g.corrupt(x0, 0.7, u), want)


def test_third_graph_config_identity_and_registry(cycle_registered) -> None:
    g = CycleWalk(5)
    assert g != Uniform(5) and Uniform(5) != g and hash(g) != hash(Uniform(5))
    assert g.mask_id is None and not g.absorbing
    back = from_config(g.to_config())
    assert type(back) is CycleWalk and back == g and repr(back) == "CycleWalk(vocab_size=5)"
    with pytest.raises(InvalidArgument, match="already registered"):
        ddm.graphs.register(type("Impostor", (CycleWalk,), {}))
    with pytest.raises(InvalidArgument, match="unknown graph config keys"):
        from_config({"type": CycleWalk.kind, "vocab_size": 5, "rate": 2.0})


def test_unregistered_graph_is_refused_by_from_config() -> None:
    with pytest.raises(InvalidArgument, match="type"):
        from_config(CycleWalk(4).to_config())


@pytest.mark.parametrize("predictor", ["analytic", "euler"])
def test_third_graph_samples_exactly_on_torch(predictor: str) -> None:
    # the reverse sampler on torch with exact scores: its draws follow the exact law of the discretised
    # sampler (computed without sampling), which comes close to p0
    n_tok, length, draws, steps = 3, 2, 4000, 64
    g, schedule = CycleWalk(n_tok), Geometric()
    p0 = correlated_law(n_tok, length)
    model = ExactScore(g, p0)
    x = sample(
        model, steps, graph=g, schedule=schedule, batch_size=draws, seq_len=length,
        predictor=predictor, seed=7, backend="torch",
    )  # fmt: skip
    got = empirical(x, n_tok)
    s = Sampler(g, schedule, predictor=predictor)
    s.set_timesteps(steps)
    exact = sampler_law(model, s)
    assert tv(exact, p0.reshape(-1)) < 0.05  # the discretisation error of 64 steps (first order)
    assert chi2_pvalue(got * draws, exact) > 1e-4


@pytest.mark.parametrize("backend", ["rust", "auto"])
def test_third_graph_is_refused_by_the_rust_backend(backend: str) -> None:
    # the Rust core has kernels for Absorbing and Uniform only: a third graph on the CPU must never run
    # one of them, whether the Rust backend is asked for or chosen by "auto"
    pytest.importorskip("ddm._core", reason="needs the built Rust core")
    g = CycleWalk(3)
    model = ExactScore(g, correlated_law(3, 2))
    if backend == "rust":
        with pytest.raises(BackendError, match="CycleWalk"):
            sample(model, 4, graph=g, schedule=Geometric(), batch_size=2, seq_len=2, seed=0, backend=backend)
    else:  # "auto" resolves to torch for a graph the core does not know, and samples exactly there
        got = sample(
            model, 4, graph=g, schedule=Geometric(), batch_size=2, seq_len=2, seed=0, backend=backend
        )
        want = sample(
            model, 4, graph=g, schedule=Geometric(), batch_size=2, seq_len=2, seed=0, backend="torch"
        )
        assert torch.equal(got, want)
