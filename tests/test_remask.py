"""Remasking (`remask=`, the ReMDM sampler, docs/math.md section 10) against exact laws."""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, sample
from ddm.sampling.predictors.remdm import remask_rates
from ddm.schedules import Geometric, LogLinear
from exact_scores import (
    BACKENDS,
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    one_torch_thread,  # noqa: F401
    sampler_law,
    tv,
)
from test_exactness import _law_on_real_tokens, _null_tv_quantile

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 3
P0 = correlated_law(N, L)
GRAPH = Absorbing(N)
KW = dict(graph=GRAPH, schedule=LogLinear(), seq_len=L)


@pytest.mark.parametrize("kind", ["cap", "rescale"])
@pytest.mark.parametrize("schedule", [LogLinear(), Geometric()], ids=["loglinear", "geometric"])
def test_rates_keep_the_forward_marginal(kind: str, schedule) -> None:
    t = torch.linspace(1.0, 1e-5, 65, dtype=torch.float64)
    sb = schedule.total_noise(t).to(torch.float64)
    a = torch.exp(-sb)
    for eta in (0.0, 0.01, 0.3, 1.0):
        r, unmask = remask_rates(sb, eta, kind)
        r_max = ((1 - a[1:]) / a[:-1]).clamp(max=1.0)
        assert bool((r >= 0).all() and (r <= r_max + 1e-15).all())
        # P(unmasked at s) = a_t (1 - r) + (1 - a_t) unmask = a_s
        torch.testing.assert_close(a[:-1] * (1 - r) + (1 - a[:-1]) * unmask, a[1:], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_remasking_is_the_analytic_law(backend: str) -> None:
    """At eta = 0 the ReMDM step is MDLM's, whose law equals the analytic step's under exact scores: at
    4 steps (TV 0.18-0.31 from p0) the draws must follow the exact 4-step analytic law."""
    model = ExactScore(GRAPH, P0)
    n = 4000
    x = sample(model, 4, batch_size=n, remask=0.0, seed=4, backend=backend, **KW)
    s = Sampler(GRAPH, LogLinear())
    s.set_timesteps(4)
    exact = _law_on_real_tokens(sampler_law(model, s), GRAPH.dim)
    assert chi2_pvalue(empirical(x, N), exact, n) > 1e-3


@pytest.mark.parametrize("kind", ["cap", "rescale"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_draws_follow_the_exact_remasking_law(backend: str, kind: str) -> None:
    """`Sampler.step_probs` gives the ReMDM step's law, so `sampler_law` is the exact law of the
    discretised sampler: at 6 steps with strong remasking the draws must follow it (chi-square)."""
    model = ExactScore(GRAPH, P0)
    n = 4000
    x = sample(model, 6, batch_size=n, remask=0.5, remask_schedule=kind, seed=12, backend=backend, **KW)
    s = Sampler(GRAPH, LogLinear(), remask=0.5, remask_schedule=kind)
    s.set_timesteps(6)
    exact = _law_on_real_tokens(sampler_law(model, s), GRAPH.dim)
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-12)
    assert chi2_pvalue(empirical(x, N), exact, n) > 1e-3


def test_sampler_config_keeps_remask() -> None:
    s = Sampler(GRAPH, LogLinear(), remask=0.1, remask_schedule="rescale", temperature=0.9)
    t = Sampler.from_config(s.config)
    assert t.predictor.name == "remdm" and t.config == s.config
    assert (t.predictor.config.remask, t.predictor.config.remask_schedule) == (0.1, "rescale")
    assert t.proposal == s.proposal
    with pytest.raises(ValueError, match="has no MASK"):
        Sampler(Uniform(N), Geometric(), remask=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_remasking_converges_to_p0(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return model(x, sigma)

    n = 4000
    x, stats = sample(recording, 256, batch_size=n, remask=0.05, seed=6, backend=backend, return_stats=True,
                      **KW)  # fmt: skip
    assert stats.network_calls <= 257
    remasked = sum(
        int(((a != GRAPH.mask_id) & (b == GRAPH.mask_id)).sum())
        for a, b in zip(seen[:-1], seen[1:], strict=True)
    )
    assert remasked > n, "tokens must be masked again"
    p = P0.reshape(-1)
    d = tv(empirical(x, N), p)
    print(f"ReMDM eta 0.05, 256 steps, {backend}: TV {d:.4f}, remasked {remasked}")
    assert d < _null_tv_quantile(p, n) + 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_depend_only_on_seed_and_index(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    kw = dict(seed=3, backend=backend, remask=0.2, remask_schedule="rescale", **KW)
    assert torch.equal(sample(model, 8, batch_size=30, **kw)[:5], sample(model, 8, batch_size=5, **kw))


def test_fixed_positions_are_never_remasked() -> None:
    model = ExactScore(GRAPH, P0)
    x = sample(model, 16, batch_size=200, remask=1.0, prefix=[2], seed=1, **KW)
    assert bool((x[:, 0] == 2).all()) and bool((x < N).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(remask=-0.1), "remask"),
        (dict(remask=1.5), "remask"),
        (dict(remask=0.1, remask_schedule="loop"), "remask_schedule"),
        (dict(remask=0.1, predictor="first_hitting"), "grid predictors"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample(ExactScore(GRAPH, P0), 2, **KW, **kwargs)


def test_remask_refuses_the_uniform_graph() -> None:
    with pytest.raises(ValueError, match="has no MASK"):
        sample(ExactScore(Uniform(N), P0), 2, graph=Uniform(N), schedule=Geometric(), seq_len=L, remask=0.1)
