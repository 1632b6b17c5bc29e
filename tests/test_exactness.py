"""`ddm.sampling.sample` against known laws, with exact concrete scores (docs/math.md section 5).

The law `p0` over 3^3 sequences puts 70% of its mass on the three constant sequences, so positions are
strongly dependent and a sampler that updates them independently within a step shows its discretisation
error at few steps. Scores are exact (`tests/exact_scores.py`): `p_t` is computed with the graph's closed
forms, so the only errors left are the time discretisation and sampling noise, and both are measured:

- `sampler_law` computes the exact output law of the discretised sampler (no sampling), so the
  discretisation error `TV(law, p0)` is known exactly: about 0.18-0.31 at 4 steps and 0.0014-0.0045 at
  256 steps (first order: it falls like 1/steps).
- Sampling noise: with n = 4000 draws over 27 states, the TV between an empirical law and the law it is
  drawn from has mean 0.023 and 99.9% quantile 0.040 (Monte Carlo from p0, recomputed in the test),
  against a discretisation error of 0.18-0.31 at 4 steps. `sample`'s draws must pass a chi-square test
  (level 1e-3) against the exact sampler law, and lie within TV 0.040 + the exact discretisation error
  of `p0` at 256 steps.
"""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, sample
from ddm.sampling.sampler import native_available
from ddm.schedules import Geometric, LogLinear
from exact_scores import (
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    expected_noise_tv,
    one_torch_thread,  # noqa: F401 (autouse fixture below)
    projected_law,
    sampler_law,
    tv,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 3
P0 = correlated_law(N, L)
GRAPHS = {
    "absorbing": (Absorbing(N), LogLinear()),
    "uniform": (Uniform(N), Geometric()),
}
BACKENDS = [
    "torch",
    pytest.param("rust", marks=pytest.mark.skipif(not native_available(), reason="ddm._core not built")),
]


def _null_tv_quantile(p: torch.Tensor, n: int, q: float = 0.999, reps: int = 2000) -> float:
    """The `q` quantile of `TV(empirical, p)` for `n` exact draws from `p` (Monte Carlo)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.multinomial(p.expand(reps, -1), n, replacement=True, generator=g)  # (reps, n)
    counts = torch.zeros(reps, p.numel(), dtype=torch.float64).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float64)
    )
    return float(torch.quantile(0.5 * (counts / n - p).abs().sum(1), q))


def _law_on_real_tokens(q: torch.Tensor, dim: int) -> torch.Tensor:
    """A law over `dim^L` sequences restricted to the `N^L` sequences without MASK, flat."""
    return q.reshape([dim] * L)[(slice(0, N),) * L].reshape(-1)


@pytest.mark.parametrize("predictor", ["analytic", "euler"])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_discretisation_error_shrinks(kind: str, predictor: str) -> None:
    """The exact law of the discretised sampler converges to p0, at first order in 1/steps."""
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, P0)
    errs = {}
    for steps in (4, 16, 64, 256):
        s = Sampler(graph, schedule, predictor=predictor)
        s.set_timesteps(steps)
        law = sampler_law(model, s)
        real = _law_on_real_tokens(law, graph.dim)
        assert float(real.sum()) == pytest.approx(1.0, abs=1e-12)  # denoising leaves no MASK
        errs[steps] = tv(real, P0.reshape(-1))
    assert errs[4] > 0.1
    assert errs[256] < 0.005
    for a, b in ((4, 16), (16, 64), (64, 256)):
        assert errs[b] < errs[a] / 2.5, errs  # about 4x per 4x steps (first order)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", ["analytic", "euler"])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_sample_reproduces_p0(kind: str, predictor: str, backend: str) -> None:
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, P0)
    n = 4000
    p = P0.reshape(-1)
    noise_q999 = _null_tv_quantile(p, n)
    assert expected_noise_tv(p, n) == pytest.approx(0.023, abs=1e-3)  # figures of the module docstring
    assert noise_q999 == pytest.approx(0.040, abs=2e-3)

    tvs = {}
    for steps in (4, 256):
        x = sample(
            model, steps, graph=graph, schedule=schedule, batch_size=n, seq_len=L,
            predictor=predictor, seed=1234, backend=backend,
        )  # fmt: skip
        assert x.shape == (n, L) and x.dtype == torch.int64
        got = empirical(x, N)  # also asserts that no MASK is left
        s = Sampler(graph, schedule, predictor=predictor)
        s.set_timesteps(steps)
        exact = _law_on_real_tokens(sampler_law(model, s), graph.dim)
        assert chi2_pvalue(got, exact, n) > 1e-3, f"{steps} steps: draws do not follow the sampler's law"
        tvs[steps] = tv(got, p)
        if steps == 256:
            bound = noise_q999 + tv(exact, p)
            assert tvs[steps] < bound, f"TV {tvs[steps]:.4f} to p0 at 256 steps, bound {bound:.4f}"
    assert tvs[4] > 0.1 and tvs[4] > tvs[256] + 0.05


CONDITIONS = {
    "prefix": dict(prefix=[1]),
    "suffix": dict(suffix=torch.tensor([0])),
    "infill": dict(infill={1: 2}),
    "prefix+suffix": dict(prefix=[2], suffix=[2]),
}
FIXED = {"prefix": {0: 1}, "suffix": {2: 0}, "infill": {1: 2}, "prefix+suffix": {0: 2, 2: 2}}


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_absorbing_conditional_is_exact(name: str) -> None:
    # analytic only: with the LogLinear schedule the absorbing Euler step has the same probabilities
    # (sigma(t_k) dt = e^d - 1 exactly), so it would repeat this test draw for draw
    graph, schedule = GRAPHS["absorbing"]
    model = ExactScore(graph, P0)
    n = 4000
    fixed = FIXED[name]
    x = sample(
        model, 128, graph=graph, schedule=schedule, batch_size=n, seq_len=L, seed=77, **CONDITIONS[name],
    )  # fmt: skip
    for i, tok in fixed.items():
        assert bool((x[:, i] == tok).all()), "a fixed position changed"
    free = [i for i in range(L) if i not in fixed]
    truth = model.conditional(fixed)
    got = empirical(x, N, free)
    # sampling noise (99.9% quantile) plus 0.01 for the discretisation at 128 steps (unconditional: 0.006)
    assert tv(got, truth) < _null_tv_quantile(truth, n) + 0.01
    assert chi2_pvalue(got, truth, n) > 1e-3


def test_uniform_projection_gap() -> None:
    """For the uniform graph, projection samples the projected reverse CTMC, not `p0(free | fixed)`.

    `projected_law` computes the continuous-time limit of the projected sampler without sampling; the
    sampler matches it (chi-square), and its distance to the true conditional is the projection gap,
    measured here for the test law: TV 0.206 (prefix x0 = 1), 0.243 (suffix x2 = 0), 0.145 (infill x1 = 2)
    -- large, because this law is strongly dependent and a fixed uniform-graph token is read as noisy.
    """
    graph, schedule = GRAPHS["uniform"]
    model = ExactScore(graph, P0)
    gaps = {}
    for name in ("prefix", "suffix", "infill"):
        fixed = FIXED[name]
        projected = projected_law(model, schedule, fixed, steps=50)
        truth = model.conditional(fixed)
        gaps[name] = tv(projected, truth)
        n = 4000
        x = sample(
            model, 128, graph=graph, schedule=schedule, batch_size=n, seq_len=L, seed=5, **CONDITIONS[name]
        )
        for i, tok in fixed.items():
            assert bool((x[:, i] == tok).all()), "a fixed position changed"
        got = empirical(x, N, [i for i in range(L) if i not in fixed])
        assert chi2_pvalue(got, projected, n) > 1e-3, f"{name}: sampler does not follow the projected CTMC"
    # the gaps stated in the docstrings (here and in ddm.sampling.sample), to 0.005
    assert gaps["prefix"] == pytest.approx(0.206, abs=5e-3)
    assert gaps["suffix"] == pytest.approx(0.243, abs=5e-3)
    assert gaps["infill"] == pytest.approx(0.145, abs=5e-3)


# ---- one token: the analytic and denoising steps are exact ----------------------------------------------


def _one_token(kind: str) -> tuple[ExactScore, torch.Tensor]:
    graph, _ = GRAPHS[kind]
    p0 = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    return ExactScore(graph, p0), p0


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_denoise_step_returns_exact_posterior(kind: str) -> None:
    model, p0 = _one_token(kind)
    graph, schedule = GRAPHS[kind]
    sampler = Sampler(graph, schedule, eps=1e-2)
    sampler.set_timesteps(10)
    last = len(sampler.timesteps) - 1
    assert sampler.step_kind(last)[0] == "denoise"
    sigma = float(sampler.sigmas[last])
    x = torch.arange(graph.dim)[:, None]  # every state once, (dim, 1)
    probs = sampler.step_probs(model(x, torch.full((graph.dim,), sigma, dtype=torch.float64)), last, x)[
        :, 0
    ]  # (dim, dim)
    # posterior p(x0 | x_t) = p0(x0) p(x_t | x0) / p_t(x_t)
    kern = graph.transition(torch.arange(N), torch.tensor(sigma, dtype=torch.float64))  # (x0, x_t)
    joint = p0[:, None] * kern  # (x0, x_t)
    post = (joint / joint.sum(0)).T  # (x_t, x0)
    torch.testing.assert_close(probs[:, :N], post, rtol=1e-6, atol=1e-12)
    if graph.absorbing:
        assert bool((probs[:, N] == 0).all()), "denoising must never return MASK"


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_analytic_step_is_exact_reverse_transition(kind: str) -> None:
    model, p0 = _one_token(kind)
    graph, schedule = GRAPHS[kind]
    sampler = Sampler(graph, schedule, predictor="analytic")
    sampler.set_timesteps(5)
    x = torch.arange(graph.dim)[:, None]  # (dim, 1)
    for k in range(5):
        s_t, s_next = float(sampler.sigmas[k]), float(sampler.grid.sigma_bar[k + 1])
        probs = sampler.step_probs(model(x, torch.full((graph.dim,), s_t, dtype=torch.float64)), k, x)[
            :, 0
        ]  # (x_t, x_s)
        # p(x_s | x_t) = p_s(x_s) exp((t - s) Q)(x_t, x_s) / p_t(x_t)
        marg_s = model.p_t(s_next)  # (dim,)
        kern = graph.transition(torch.arange(graph.dim), torch.tensor(s_t - s_next, dtype=torch.float64))
        joint = marg_s[None, :] * kern.T  # (x_t, x_s): p_s(x_s) p(x_t | x_s)
        keep = joint.sum(1) > 0  # states reachable at t
        torch.testing.assert_close(
            probs[keep], (joint / joint.sum(1, keepdim=True))[keep], rtol=1e-6, atol=1e-12
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_denoise_draws_follow_posterior(kind: str, backend: str) -> None:
    """The draws (not only the probabilities) of the denoising step, on both backends."""
    model, p0 = _one_token(kind)
    graph, schedule = GRAPHS[kind]
    sampler = Sampler(graph, schedule, eps=0.3)
    sampler.set_timesteps(3)
    last = len(sampler.timesteps) - 1
    sigma = float(sampler.sigmas[last])
    n = 20_000
    x_t = graph.dim - 1  # MASK for absorbing, the rare token 2 for uniform
    x = torch.full((n, 1), x_t)
    out = sampler.step(
        model(x, torch.full((n,), sigma, dtype=torch.float64)), last, x, seed=11, backend=backend
    ).prev_sample
    kern = graph.transition(torch.arange(N), torch.tensor(sigma, dtype=torch.float64))[:, x_t]  # (x0,)
    post = p0 * kern / (p0 * kern).sum()
    got = empirical(out, N)
    assert chi2_pvalue(got, post, n) > 1e-3
