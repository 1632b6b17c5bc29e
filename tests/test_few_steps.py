"""Few-step sampling against exactly known laws, on both backends (issue 12, defect 1).

At 1, 2 and 4 steps the noise step `d = sigma_bar(t_k) - sigma_bar(t_{k+1})` is large (up to ~20 for the
uniform graph's Geometric(1e-4, 20)), which is where a float32 cancellation in `max(0, s_y - T)` of the
uniform Tweedie step once returned the law of uniform data. Every configuration is checked three ways:
the Rust draws and the torch draws each pass a chi-square test against the exact law of the discretised
sampler (`sampler_law`), and against each other (a two-sample chi-square test of homogeneity).

Sampling noise: n = 20,000 draws over 16 states; the exact law at 1 step is far from p0 (the
discretisation error is large at few steps), which is fine: the test is against the sampler's own law.
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
    one_torch_thread,  # noqa: F401 (fixture)
    sampler_law,
    tv,
)
from scipy import stats

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not native_available(), reason="ddm._core not built"),
]
N, L = 4, 2
P0 = correlated_law(N, L)
GRAPHS = {
    "absorbing": (Absorbing(N), LogLinear()),
    "uniform": (Uniform(N), Geometric(1e-4, 20.0)),
}


def _real(q: torch.Tensor, dim: int) -> torch.Tensor:
    return q.reshape([dim] * L)[(slice(0, N),) * L].reshape(-1)


def _two_sample_pvalue(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    """Chi-square test of homogeneity of two empirical laws drawn with `n` samples each."""
    counts = torch.stack([a, b]) * n  # (2, states)
    keep = counts.sum(0) > 0
    return float(stats.chi2_contingency(counts[:, keep].round().numpy()).pvalue)


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("predictor", ["analytic", "euler"])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_few_step_draws_follow_the_exact_sampler_law(kind: str, predictor: str, steps: int) -> None:
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, P0)
    n = 20_000
    s = Sampler(graph, schedule, predictor=predictor)
    s.set_timesteps(steps)
    exact = _real(sampler_law(model, s), graph.dim)
    got = {}
    for backend in ("rust", "torch"):
        x = sample(
            model, steps, graph=graph, schedule=schedule, batch_size=n, seq_len=L,
            predictor=predictor, seed=2024, backend=backend,
        )  # fmt: skip
        got[backend] = empirical(x, N)
        p = chi2_pvalue(got[backend], exact, n)
        assert p > 1e-4, (
            f"{backend}: draws do not follow the exact sampler law at {steps} steps "
            f"(TV {tv(got[backend], exact):.4f}, p = {p:.2e})"
        )
    assert _two_sample_pvalue(got["rust"], got["torch"], n) > 1e-4, "Rust and torch draw different laws"


def _one_token_posterior(p0: torch.Tensor, graph, sigma_t: float, sigma_s: float, x_t: int) -> torch.Tensor:
    """`p(x_s | x_t)` for one token: `p_s(x_s) exp((sigma_t - sigma_s) Q)(x_s, x_t) / p_t(x_t)`."""
    marg_s = p0 @ graph.transition(torch.arange(len(p0)), torch.tensor(sigma_s, dtype=torch.float64))
    kern = graph.transition(torch.arange(graph.dim), torch.tensor(sigma_t - sigma_s, dtype=torch.float64))
    joint = marg_s * kern[:, x_t]  # (x_s,)
    return joint / joint.sum()


@pytest.mark.parametrize("backend", ["rust", "torch"])
@pytest.mark.parametrize("d_gap", [1e-4, 1e-2, 1.0])
def test_one_uniform_analytic_step_at_large_noise_step(backend: str, d_gap: float) -> None:
    """One analytic step from sigma_bar = 20 to sigma_bar = d_gap (d = 20 - d_gap), exact scores.

    The scores at sigma_bar = 20 differ from 1 by about e^-20 = 2e-9, far below float32's resolution near
    1, while the posterior after the step is far from uniform: the step must keep that signal.
    """
    graph = Uniform(5)
    p0 = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    model = ExactScore(graph, p0)
    sigma_t = 20.0
    n = 100_000
    x = torch.zeros(n, 1, dtype=torch.int64)
    log_score = model(x, torch.full((n,), sigma_t, dtype=torch.float64)).to(torch.float32)  # (n, 1, 5)
    s = Sampler(graph, Geometric(d_gap, sigma_t), predictor="analytic", eps=1e-9, denoise=False)
    s.set_timesteps(1)
    sigma_s = float(s.grid.sigma_bar[1])  # d_gap up to 1e-8 relative
    assert float(s.sigmas[0]) == pytest.approx(sigma_t, rel=1e-12)
    truth = _one_token_posterior(p0, graph, sigma_t, sigma_s, 0)
    out = s.step(log_score, 0, x, seed=3, backend=backend).prev_sample
    got = empirical(out, 5)
    assert tv(got, truth) < 0.01, f"TV {tv(got, truth):.4f}: {got.tolist()} vs {truth.tolist()}"
    assert chi2_pvalue(got, truth, n) > 1e-4
