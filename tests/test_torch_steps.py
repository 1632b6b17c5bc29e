"""Torch reference reverse steps (docs/math.md section 5): probabilities against matrix formulas, exactness
with exact
scores, and the categorical draws by chi-square at fixed seeds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ddm._categorical import sample_categorical
from ddm.graphs import Absorbing, Graph, Uniform
from ddm.sampling import torch_steps as ts
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

F64 = torch.float64
PROBS = [ts.euler_step_probs, ts.analytic_step_probs, ts.denoise_step_probs]

kinds = st.sampled_from(["uniform", "absorbing"])
sizes = st.integers(min_value=2, max_value=7)


def make(kind: str, n: int) -> Graph:
    return Uniform(n) if kind == "uniform" else Absorbing(n)


def random_state(g: Graph, gen: torch.Generator, b: int = 3, l: int = 6):
    x = torch.randint(g.dim, (b, l), generator=gen)
    if g.absorbing:
        x[:, ::2] = g.mask_id  # plenty of MASK rows
    log_score = 2 * torch.randn(b, l, g.dim, dtype=torch.float32, generator=gen)
    return x, log_score


def ratios(x: torch.Tensor, log_score: torch.Tensor) -> torch.Tensor:
    """s = exp(l) in float64 with s_x = 1."""
    return torch.exp(log_score.double().scatter(-1, x[..., None], 0.0))


# ---- basic properties ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(kind=kinds, n=sizes, h=st.floats(0.0, 5.0), seed=st.integers(0, 2**31))
def test_probabilities_are_distributions(kind: str, n: int, h: float, seed: int) -> None:
    g = make(kind, n)
    x, l = random_state(g, torch.Generator().manual_seed(seed))
    for fn in PROBS:
        p = fn(g, x, l, torch.full((x.shape[0],), h, dtype=F64))
        assert p.shape == (*x.shape, g.dim) and p.dtype == F64
        assert torch.all(p >= 0)
        torch.testing.assert_close(p.sum(-1), torch.ones(x.shape, dtype=F64), rtol=0, atol=1e-14)
        if g.absorbing:  # unmasked positions never move
            keep = x != g.mask_id
            assert torch.all(p[keep] == F.one_hot(x[keep], g.dim).double())


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("fn", PROBS)
def test_entry_at_current_token_is_ignored(kind: str, fn) -> None:
    g = make(kind, 5)
    x, l = random_state(g, torch.Generator().manual_seed(0))
    ref = fn(g, x, l, 0.4)
    for garbage in [0.0, 30.0, -math.inf, math.nan]:
        l2 = l.scatter(-1, x[..., None], garbage)
        torch.testing.assert_close(fn(g, x, l2, 0.4), ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("fn", PROBS)
def test_noise_argument_forms_agree(kind: str, fn) -> None:
    g = make(kind, 5)
    x, l = random_state(g, torch.Generator().manual_seed(1))
    ref = fn(g, x, l, 0.3)
    for form in [
        torch.tensor(0.3, dtype=F64),
        torch.full((3,), 0.3, dtype=F64),
        torch.full((3, 1), 0.3, dtype=F64),
    ]:
        torch.testing.assert_close(fn(g, x, l, form), ref, rtol=0, atol=0)
    per_seq = fn(g, x, l, torch.tensor([0.1, 0.3, 2.0], dtype=F64))
    for b, h in enumerate([0.1, 0.3, 2.0]):
        torch.testing.assert_close(per_seq[b], fn(g, x[b : b + 1], l[b : b + 1], h)[0], rtol=0, atol=0)


# ---- probabilities against docs/math.md / matrix formulas ------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(kind=kinds, n=sizes, h=st.floats(0.0, 0.05), seed=st.integers(0, 2**31))
def test_euler_matches_spec(kind: str, n: int, h: float, seed: int) -> None:
    # small enough steps that nothing is clipped: probs_y = h Q(x, y) s_y, probs_x = 1 - sum
    g = make(kind, n)
    x, _ = random_state(g, torch.Generator().manual_seed(seed))
    l = torch.rand(*x.shape, g.dim, generator=torch.Generator().manual_seed(seed)).float()  # s in [1, e]
    s = ratios(x, l)
    q = g.rate_matrix()
    off = h * q[x] * s  # (B, L, dim): Q(x, y) = q[x, y]
    at_x = F.one_hot(x, g.dim).bool()
    off = off.masked_fill(at_x, 0.0)
    expected = torch.where(at_x, 1 - off.sum(-1, keepdim=True), off)
    assert torch.all(expected >= 0)
    torch.testing.assert_close(ts.euler_step_probs(g, x, l, h), expected, rtol=1e-13, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(kind=kinds, n=sizes, d=st.floats(0.0, 0.1), seed=st.integers(0, 2**31))
def test_analytic_matches_matrix_exp(kind: str, n: int, d: float, seed: int) -> None:
    g = make(kind, n)
    x, _ = random_state(g, torch.Generator().manual_seed(seed))
    # log-scores in [-0.2, 0.2] keep all probabilities >= 0 at these steps ((e^d - 1) 7 e^0.2 < 1)
    l = (0.4 * torch.rand(*x.shape, g.dim, generator=torch.Generator().manual_seed(seed)) - 0.2).float()
    s = ratios(x, l)
    q = g.rate_matrix()
    stag = s @ torch.linalg.matrix_exp(-d * q).T  # [exp(-dQ) s]_y
    fwd = torch.linalg.matrix_exp(d * q)[x]  # exp(dQ)(x, y)
    expected = stag * fwd
    assert torch.all(expected >= 0)
    torch.testing.assert_close(ts.analytic_step_probs(g, x, l, d), expected, rtol=1e-12, atol=1e-15)


@settings(max_examples=30, deadline=None)
@given(n=sizes, d=st.floats(0.0, 0.5), seed=st.integers(0, 2**31))
def test_absorbing_analytic_closed_form(n: int, d: float, seed: int) -> None:
    g = Absorbing(n)
    x = torch.full((2, 3), g.mask_id)
    l = (torch.rand(2, 3, g.dim, generator=torch.Generator().manual_seed(seed)) - 4.0).float()  # s < e^-3
    s = ratios(x, l)[..., :-1]
    p = ts.analytic_step_probs(g, x, l, d)
    torch.testing.assert_close(p[..., :-1], math.expm1(d) * s, rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(p[..., -1], 1 - math.expm1(d) * s.sum(-1), rtol=1e-12, atol=1e-15)


# ---- exactness with exact scores of a known one-token law ------------------------------------------------


def exact_setup(g: Graph, seed: int):
    gen = torch.Generator().manual_seed(seed)
    p0 = torch.rand(g.dim, dtype=F64, generator=gen) + 0.05
    if g.absorbing:
        p0[g.mask_id] = 0.0
    p0 /= p0.sum()
    q = g.rate_matrix()
    return p0, q


@settings(max_examples=40, deadline=None)
@given(
    kind=kinds,
    n=sizes,
    sig=st.floats(0.05, 8.0),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_analytic_step_is_the_exact_reverse_transition(kind, n, sig, frac, seed) -> None:
    # s_y = p_t(y) / p_t(x) with p_t = exp(sigma_t Q) p0; from sigma_t to sigma_s = frac * sigma_t the
    # analytic step must give p(x_s = y | x_t = x) = exp(dQ)(x, y) p_s(y) / p_t(x) (Bayes),
    # with d = sigma_t - sigma_s
    g = make(kind, n)
    p0, q = exact_setup(g, seed)
    sig_s = frac * sig
    p_t = torch.linalg.matrix_exp(sig * q) @ p0
    p_s = torch.linalg.matrix_exp(sig_s * q) @ p0
    x = torch.arange(g.dim)[None, :]  # every state once
    l = (torch.log(p_t)[None, None, :] - torch.log(p_t)[x][..., None]).float()  # (1, dim, dim)
    l = torch.log(p_t)[None, None, :] - torch.log(p_t)[x][..., None]  # float64 scores for exactness
    got = ts.analytic_step_probs(g, x, l, sig - sig_s)
    d = sig - sig_s
    bayes = torch.linalg.matrix_exp(d * q)[x] * p_s[None, None, :] / p_t[x][..., None]  # (1, dim, dim)
    torch.testing.assert_close(got, bayes, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bayes.sum(-1), torch.ones(1, g.dim, dtype=F64), rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(kind=kinds, n=sizes, sig=st.floats(1e-3, 8.0), seed=st.integers(0, 2**31))
def test_denoise_step_is_the_exact_posterior(kind, n, sig, seed) -> None:
    g = make(kind, n)
    p0, q = exact_setup(g, seed)
    kernel = torch.linalg.matrix_exp(sig * q)  # [y, x0] = p(x_sigma = y | x0)
    p_t = kernel @ p0
    x = torch.arange(g.dim)[None, :]
    l = torch.log(p_t)[None, None, :] - torch.log(p_t)[x][..., None]
    got = ts.denoise_step_probs(g, x, l, sig)
    posterior = kernel[x] * p0[None, None, :] / p_t[x][..., None]  # p0(y | x_sigma = x)
    torch.testing.assert_close(got, posterior, rtol=1e-9, atol=1e-12)
    if g.absorbing:
        assert torch.all(got[..., g.mask_id] == 0)


# ---- clipping --------------------------------------------------------------------------------------------


def test_clipping_renormalises_absorbing_overshoot() -> None:
    # (e^d - 1) sum s > 1: the MASK probability would be negative; it is clipped to 0 and the rest
    # renormalised, so the position unmasks with probability 1 in proportion to s_y
    g = Absorbing(4)
    x = torch.full((1, 2), g.mask_id)
    l = torch.log(torch.tensor([[[1.0, 2.0, 3.0, 4.0, 9.0]] * 2], dtype=F64))
    p = ts.analytic_step_probs(g, x, l, 1.0)
    s = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    torch.testing.assert_close(p[0, 0, :-1], s / s.sum(), rtol=1e-14, atol=0)
    assert p[0, 0, -1] == 0
    e = ts.euler_step_probs(g, x, l, 2.0)
    torch.testing.assert_close(e[0, 1, :-1], s / s.sum(), rtol=1e-14, atol=0)
    assert e[0, 1, -1] == 0


def test_clipping_renormalises_uniform_euler() -> None:
    g = Uniform(3)
    x = torch.tensor([[0]])
    l = torch.log(torch.tensor([[[1.0, 6.0, 3.0]]], dtype=F64))
    p = ts.euler_step_probs(g, x, l, 1.0)  # off-diagonal 6/3 + 3/3 = 3 > 1: stay probability clipped to 0
    torch.testing.assert_close(p[0, 0], torch.tensor([0.0, 2 / 3, 1 / 3], dtype=F64), rtol=1e-14, atol=0)


# ---- draws -----------------------------------------------------------------------------------------------


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a zero-probability state was drawn"
    if keep.sum() == 1:
        return 1.0  # a deterministic row: the assertion above is the whole test
    return float(stats.chisquare(counts[keep].double().numpy(), (probs[keep] * counts.sum()).numpy()).pvalue)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize(
    "step, probs_fn, noise",
    [
        (ts.euler_step, ts.euler_step_probs, 0.3),
        (ts.analytic_step, ts.analytic_step_probs, 0.4),
        (ts.denoise_step, ts.denoise_step_probs, 0.2),
    ],
)
def test_steps_draw_from_their_probabilities(kind, step, probs_fn, noise) -> None:
    # one fixed row replicated over 200 x 500 positions; p-value threshold 1e-4 at a fixed seed
    g = make(kind, 6)
    gen = torch.Generator().manual_seed(11)
    x_row = torch.tensor([g.dim - 1, 2])  # MASK (absorbing) or the last token, and token 2
    l_row = torch.randn(2, g.dim, generator=gen).float()
    for j in range(2):
        x = torch.full((200, 500), int(x_row[j]))
        l = l_row[j].expand(200, 500, g.dim)
        new = step(g, x, l, noise, generator=gen)
        assert new.shape == x.shape and new.dtype == torch.int64
        probs = probs_fn(g, x[:1, :1], l[:1, :1], noise)[0, 0]
        assert chi2_pvalue(torch.bincount(new.flatten(), minlength=g.dim), probs) > 1e-4
    if g.absorbing and step is ts.denoise_step:
        assert torch.all(new != g.mask_id)


def test_steps_are_seeded() -> None:
    g = Uniform(9)
    x, l = random_state(g, torch.Generator().manual_seed(0))
    a = ts.analytic_step(g, x, l, 0.5, generator=torch.Generator().manual_seed(4))
    b = ts.analytic_step(g, x, l, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_sample_categorical_never_returns_zero_mass() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0, 1e-300]], dtype=F64)
    draws = sample_categorical(probs.expand(50000, 2, 5), generator=gen)
    assert set(draws[:, 0].unique().tolist()) == {1, 3}
    assert torch.all(draws[:, 1] == 4)
    frac = (draws[:, 0] == 3).double().mean().item()
    assert abs(frac - 0.7) < 5 * math.sqrt(0.21 / 50000)
    with pytest.raises(ValueError, match="probs"):
        sample_categorical(torch.tensor([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="probs"):
        sample_categorical(torch.tensor([[0.5, -0.1, 0.6]]))


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", PROBS)
@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("uniform_shaped_score", ValueError, "log_score must have shape"),
        ("token_out_of_range", ValueError, "x holds"),
        ("negative_noise", ValueError, "must be finite and >= 0"),
        ("nan_noise", ValueError, "must be finite and >= 0"),
        ("wrong_batch_noise", ValueError, "scalar, \\[B\\] or \\[B, 1\\]"),
        ("nan_score", ValueError, "NaN"),
        ("float_tokens", TypeError, "integer"),
        ("rank_1_tokens", ValueError, "\\[B, L\\]"),
        ("not_a_graph", TypeError, "graph"),
    ],
)
def test_bad_input(fn, case, exc, match) -> None:
    g = Absorbing(4)
    x = torch.full((2, 3), g.mask_id)
    l = torch.zeros(2, 3, g.dim)
    noise = 0.1
    graph = g
    if case == "uniform_shaped_score":
        l = torch.zeros(2, 3, 4)
    elif case == "token_out_of_range":
        x = x + 1
    elif case == "negative_noise":
        noise = torch.tensor([0.1, -0.1], dtype=F64)
    elif case == "nan_noise":
        noise = math.nan
    elif case == "wrong_batch_noise":
        noise = torch.zeros(3, dtype=F64)
    elif case == "nan_score":
        l[0, 0, 1] = math.nan
    elif case == "float_tokens":
        x = x.double()
    elif case == "rank_1_tokens":
        x, l = x[0], l[0]
    elif case == "not_a_graph":
        graph = "absorbing"
    with pytest.raises(exc, match=match):
        fn(graph, x, l, noise)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_cuda_matches_cpu(kind: str) -> None:
    g = make(kind, 7)
    x, l = random_state(g, torch.Generator().manual_seed(3))
    for fn in PROBS:
        torch.testing.assert_close(
            fn(g, x.cuda(), l.cuda(), 0.3).cpu(), fn(g, x, l, 0.3), rtol=1e-12, atol=1e-14
        )
    gen = torch.Generator(device="cuda").manual_seed(0)
    new = ts.analytic_step(g, x.cuda(), l.cuda(), 0.3, generator=gen)
    assert new.device.type == "cuda" and new.dtype == torch.int64
