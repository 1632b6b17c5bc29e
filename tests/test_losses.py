"""Score entropy (closed forms vs the literal sum) and the DWDSE training loss (docs/math.md section 4)."""

from __future__ import annotations

import math

import pytest
import torch
from ddm.graphs import Absorbing, Graph, Uniform
from ddm.losses import dwdse, score_entropy_bruteforce
from ddm.schedules import Geometric, LogLinear
from hypothesis import given, settings
from hypothesis import strategies as st

F64 = torch.float64

kinds = st.sampled_from(["uniform", "absorbing"])
sizes = st.integers(min_value=2, max_value=7)
sigmas = st.one_of(
    st.floats(min_value=-6.0, max_value=math.log10(45.0)).map(lambda e: 10.0**e),
    st.sampled_from([1e-6, 40.0]),
)


def make(kind: str, n: int) -> Graph:
    return Uniform(n) if kind == "uniform" else Absorbing(n)


def noisy_pair(g: Graph, gen: torch.Generator, b: int = 4, l: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean tokens and a noisy state reachable from them (half the positions changed)."""
    x0 = torch.randint(g.vocab_size, (b, l), generator=gen)
    change = torch.rand(b, l, generator=gen) < 0.5
    other = g.mask_id if g.absorbing else torch.randint(g.vocab_size, (b, l), generator=gen)
    return x0, torch.where(change, other, x0)


def true_log_ratios(g: Graph, sigma: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """log rho_y = log p(y | x0) - log p(x_t | x0) from matrix_exp, [B, L, dim] (-inf where rho = 0)."""
    kernel = torch.linalg.matrix_exp(sigma * g.rate_matrix())  # (dim, dim)
    col = kernel[:, x0].permute(1, 2, 0)  # (B, L, dim): p(y | x0)
    return torch.log(col) - torch.log(col.gather(-1, x_t[..., None]))


# ---- the closed forms against the brute-force sum ---------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(kind=kinds, n=sizes, sigma=sigmas, seed=st.integers(0, 2**31))
def test_score_entropy_equals_bruteforce(kind: str, n: int, sigma: float, seed: int) -> None:
    g = make(kind, n)
    gen = torch.Generator().manual_seed(seed)
    x0, x_t = noisy_pair(g, gen)
    l = 3 * torch.randn(*x0.shape, g.dim, dtype=F64, generator=gen)
    s = torch.tensor(sigma, dtype=F64)
    got = g.score_entropy(l, s, x_t, x0)
    ref = score_entropy_bruteforce(g, l, s, x_t, x0)
    assert got.shape == x0.shape and got.dtype == F64
    assert torch.all(got >= 0)
    # the brute force sums terms up to rho |l| + K(rho) in size, so that is its absolute error scale
    rho_max = torch.exp(true_log_ratios(g, s, x_t, x0)).amax(-1)
    scale = (torch.exp(l).sum(-1) + rho_max * (l.abs().amax(-1) + rho_max.log().abs() + 1)).clamp(min=1)
    assert torch.all((got - ref).abs() <= 1e-13 * scale), (got - ref).abs().max()


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_per_sequence_sigma(kind: str) -> None:
    g = make(kind, 5)
    gen = torch.Generator().manual_seed(0)
    x0, x_t = noisy_pair(g, gen, b=3)
    l = torch.randn(*x0.shape, g.dim, dtype=F64, generator=gen)
    sigma = torch.tensor([[1e-3], [0.5], [30.0]], dtype=F64)
    got = g.score_entropy(l, sigma, x_t, x0)
    for b in range(3):
        torch.testing.assert_close(
            got[b], g.score_entropy(l[b : b + 1], sigma[b, 0], x_t[b : b + 1], x0[b : b + 1])[0]
        )
    torch.testing.assert_close(got, score_entropy_bruteforce(g, l, sigma, x_t, x0), rtol=1e-11, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(kind=kinds, n=sizes, sigma=sigmas, seed=st.integers(0, 2**31))
def test_zero_with_zero_gradient_at_true_ratios(kind: str, n: int, sigma: float, seed: int) -> None:
    g = make(kind, n)
    gen = torch.Generator().manual_seed(seed)
    x0, x_t = noisy_pair(g, gen)
    s = torch.tensor(sigma, dtype=F64)
    log_rho = true_log_ratios(g, s, x_t, x0)
    # entries with rho = 0 (absorbing, y != x0) are never matched exactly by a finite l; give them a value
    # that makes their term exp(l) vanish in float64, and put garbage at y = x_t, which must be ignored
    l = torch.where(torch.isinf(log_rho), torch.full_like(log_rho, -800.0), log_rho)
    l = l.scatter(-1, x_t[..., None], 7.0).requires_grad_(True)
    dse = g.score_entropy(l, s, x_t, x0)
    rho = torch.exp(log_rho)
    # rho is O(1/sigma) at most; the loss is a second-order quantity in the rounding of log rho
    assert torch.all(dse.abs() <= 1e-20 * (1 + rho.amax(-1)) ** 2), dse.abs().max()
    (grad,) = torch.autograd.grad(dse.sum(), l)
    # the gradient Q(x_t, y) (exp(l_y) - rho_y) vanishes up to the rounding of exp(log rho)
    assert torch.all(grad.abs() <= 1e-14 * (1 + rho)), grad.abs().max()


def test_absorbing_unmasked_rows_are_exactly_zero() -> None:
    g = Absorbing(6)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(6, (5, 9), generator=gen)
    x_t = x0.clone()
    x_t[:, ::2] = g.mask_id
    l = (20 * torch.randn(5, 9, g.dim, generator=gen)).requires_grad_(True)
    dse = g.score_entropy(l, torch.tensor([[0.1]] * 5), x_t, x0)
    assert torch.all(dse[:, 1::2] == 0)
    assert torch.all(dse[:, ::2] > 0)
    dse.sum().backward()
    assert torch.all(l.grad[:, 1::2] == 0)
    # no masked position at all: still zeros, still differentiable
    l2 = torch.randn(2, 3, g.dim, requires_grad=True)
    out = g.score_entropy(l2, 0.3, x0[:2, :3], x0[:2, :3])
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.all(l2.grad == 0)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("sigma", [1e-6, 1e-3, 40.0, 50.0])
def test_stable_in_float32_at_extreme_noise(kind: str, sigma: float) -> None:
    # near the true ratios (the regime of a trained model) the direct sum exp(l) - rho l + K(rho) cancels
    # catastrophically when rho ~ 1/sigma is large; the closed form must stay accurate in float32
    g = make(kind, 50)
    gen = torch.Generator().manual_seed(2)
    x0, x_t = noisy_pair(g, gen)
    s64 = torch.tensor(sigma, dtype=F64)
    log_rho = true_log_ratios(g, s64, x_t, x0)
    l64 = torch.where(torch.isinf(log_rho), torch.full_like(log_rho, -30.0), log_rho)
    l64 = l64 + 0.3 * torch.randn(l64.shape, dtype=F64, generator=gen)  # |d| ~ 0.3 from the truth
    l32 = l64.float()
    ref = score_entropy_bruteforce(g, l32.double(), s64, x_t, x0)  # same inputs, float64 oracle
    got32 = g.score_entropy(l32, torch.tensor(sigma, dtype=torch.float32), x_t, x0)
    assert got32.dtype == torch.float32 and torch.all(torch.isfinite(got32))
    # float32 log rho is off by ~6e-8 |log rho|; the loss near the truth is ~rho d^2, so relative 1e-4 is
    # a few float32 ulps of the inputs, while the naive sum would be off by ~rho |log rho| * 6e-8
    torch.testing.assert_close(got32.double(), ref, rtol=2e-4, atol=1e-6)
    got64 = g.score_entropy(l32.double(), s64, x_t, x0)
    torch.testing.assert_close(got64, ref, rtol=1e-9, atol=1e-12)


def test_dtype_promotion() -> None:
    g = Uniform(4)
    x = torch.zeros(1, 2, dtype=torch.long)
    l = torch.zeros(1, 2, 4)
    assert g.score_entropy(l, 0.5, x, x).dtype == torch.float32
    assert g.score_entropy(l, torch.tensor(0.5, dtype=F64), x, x).dtype == F64
    assert g.score_entropy(l.double(), 0.5, x, x).dtype == F64


# ---- the zero-score absorbing model: (1 - eps) ln N per token at every t ----------------------------------


@pytest.mark.parametrize("n", [2, 11, 50257])
@pytest.mark.parametrize("t", [0.01, 0.3, 0.77, 1.0])
def test_zero_score_absorbing_expected_loss(n: int, t: float) -> None:
    # l = raw - log esigm1(sigma_bar) - log(dim - 1) with raw = 0 (SEDD "scale by sigma"; docs/math.md
    # section 4).
    # x_t is MASK with probability 1 - e^{-sigma_bar} and x0 otherwise (DSE = 0 then), so the expectation
    # over x_t is exact: sigma(t) (1 - e^{-sigma_bar}) DSE(MASK) = (1 - eps) ln N.
    eps = 1e-3
    g, sched = Absorbing(n), LogLinear(eps)
    sigma_bar, sigma = sched(torch.tensor(t, dtype=F64))
    x0 = torch.arange(min(n, 7))[None, :]
    x_t = torch.full_like(x0, g.mask_id)
    raw = torch.zeros(*x0.shape, g.dim, dtype=F64)
    expm1 = torch.expm1(sigma_bar)
    l = raw - torch.log(expm1) - math.log(g.dim - 1)
    l = l.scatter(-1, x_t[..., None], 0.0)
    dse_mask = g.score_entropy(l, sigma_bar, x_t, x0)  # (1, L)
    assert torch.all(g.score_entropy(l, sigma_bar, x0, x0) == 0)
    expected = sigma * -torch.expm1(-sigma_bar) * dse_mask
    torch.testing.assert_close(
        expected, torch.full_like(expected, (1 - eps) * math.log(n)), rtol=1e-12, atol=0
    )


# ---- DWDSE ----------------------------------------------------------------------------------------------


def zero_raw_absorbing_model(g: Absorbing):
    def model(x_t: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        assert sigma_bar.shape == (x_t.shape[0],)
        l = -torch.log(torch.expm1(sigma_bar))[:, None, None] - math.log(g.dim - 1)
        return l.expand(*x_t.shape, g.dim)

    return model


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_dwdse_given_t_equals_weighted_score_entropy(kind: str) -> None:
    g = make(kind, 6)
    sched = LogLinear() if g.absorbing else Geometric()
    x0 = torch.randint(6, (3, 10), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    w = torch.randn(g.dim, dtype=F64, requires_grad=True)

    def model(x_t, sigma_bar):
        return torch.tanh(sigma_bar)[:, None, None] * w + 0.1 * x_t[..., None]

    loss = dwdse(model, g, sched, x0, t=t, generator=torch.Generator().manual_seed(9))
    assert loss.shape == (3,)
    sigma_bar, sigma = sched(t)
    x_t = g.sample_transition(x0, sigma_bar[:, None], generator=torch.Generator().manual_seed(9))
    expected = sigma * g.score_entropy(model(x_t, sigma_bar), sigma_bar[:, None], x_t, x0).sum(-1)
    torch.testing.assert_close(loss, expected, rtol=1e-14, atol=0)
    loss.sum().backward()
    assert w.grad is not None and torch.all(torch.isfinite(w.grad)) and w.grad.abs().sum() > 0


def test_dwdse_zero_score_monte_carlo_mean() -> None:
    # over t ~ U[eps_t, 1] and x_t, the mean loss per token of the zero-raw absorbing model is (1 - eps) ln N
    n, eps = 10, 1e-3
    g = Absorbing(n)
    x0 = torch.randint(n, (4000, 16), generator=torch.Generator().manual_seed(1))
    loss = dwdse(
        zero_raw_absorbing_model(g), g, LogLinear(eps), x0, generator=torch.Generator().manual_seed(2)
    )
    per_token = loss.double() / x0.shape[1]
    mean, se = per_token.mean().item(), per_token.std().item() / math.sqrt(len(per_token))
    assert abs(mean - (1 - eps) * math.log(n)) < 5 * se, (mean, se)


def test_dwdse_draws_t_in_range() -> None:
    # t ~ U[eps_t, 1]: recover t from the noise level the model sees and test its law (KS, fixed seed)
    g = Uniform(3)
    seen = []

    def model(x_t, sigma_bar):
        seen.append(sigma_bar.double())
        return torch.zeros(*x_t.shape, g.dim)

    sched = LogLinear()
    n, eps_t = 5000, 0.25
    gen = torch.Generator().manual_seed(0)
    dwdse(model, g, sched, torch.zeros(n, 1, dtype=torch.long), eps_t=eps_t, generator=gen)
    t = -torch.expm1(-seen[0]) / (1 - sched.eps)  # inverse of sigma_bar(t) = -log(1 - (1 - eps) t)
    assert t.min().item() >= eps_t - 1e-5 and t.max().item() <= 1 + 1e-5
    u = ((t - eps_t) / (1 - eps_t)).sort().values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum((grid - u).abs(), (u - (grid - 1 / n)).abs()).max().item()
    assert ks < 1.63 / math.sqrt(n)  # the 1% critical value of the Kolmogorov-Smirnov statistic


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"eps_t": 1.0}, ValueError, "eps_t"),
        ({"t": torch.tensor([0.5, 0.5])}, ValueError, "t must"),
        ({"t": 1.5}, ValueError, "t must lie"),
        ({"x0": torch.tensor([[3]])}, ValueError, "x0"),
        ({"x0": torch.tensor([3])}, ValueError, "x0"),
        ({"model": lambda x, s: torch.zeros(1, 1, 2)}, ValueError, "log_score_fn"),
    ],
)
def test_dwdse_bad_input(kwargs, exc, match) -> None:
    g = Uniform(3)
    model = kwargs.pop("model", lambda x, s: torch.zeros(*x.shape, 3))
    x0 = kwargs.pop("x0", torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(exc, match=match):
        dwdse(model, g, LogLinear(), x0, **kwargs)
