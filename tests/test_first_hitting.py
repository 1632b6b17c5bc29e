"""First-hitting sampling (`predictor="first_hitting"`, docs/math.md section 8) against exact laws.

With exact scores the sampler is exact at any number of calls: its draws must sit at the sampling-noise
floor of `p0` (n = 4000 draws over 27 states: TV mean 0.023, 99.9% quantile 0.040, as in
`test_exactness.py`) and pass a chi-square test against `p0`, where the 4-step analytic sampler is at TV
0.18-0.31.
"""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import sample
from ddm.schedules import Geometric, LogLinear
from exact_scores import (
    BACKENDS,
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    expected_noise_tv,
    needs_rust,
    one_torch_thread,  # noqa: F401
    tv,
)
from test_exactness import _null_tv_quantile

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 3
P0 = correlated_law(N, L)
GRAPH = Absorbing(N)
TV_FLOOR = _null_tv_quantile(P0.reshape(-1), 4000)  # 0.040


@pytest.mark.parametrize("schedule", [LogLinear(), Geometric()], ids=["loglinear", "geometric"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_first_hitting_is_exact_in_L_calls(backend: str, schedule) -> None:
    model = ExactScore(GRAPH, P0)
    n = 4000
    x, stats = sample(
        model, 1, graph=GRAPH, schedule=schedule, batch_size=n, seq_len=L, predictor="first_hitting",
        seed=21, backend=backend, return_stats=True,
    )  # fmt: skip
    assert stats.network_calls == L and stats.rows_evaluated == L * n
    got = empirical(x, N)
    p = P0.reshape(-1)
    d = tv(got, p)
    print(f"first-hitting {backend} {schedule!r}: TV {d:.4f}, floor mean {expected_noise_tv(p, n):.4f}")
    assert d < TV_FLOOR, f"TV {d:.4f} above the noise floor {TV_FLOOR:.4f}"
    assert chi2_pvalue(got, p, n) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_hitting_conditional_is_exact(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    n = 4000
    x, stats = sample(
        model, 1, graph=GRAPH, schedule=LogLinear(), batch_size=n, seq_len=L, predictor="first_hitting",
        seed=5, backend=backend, prefix=[1], return_stats=True,
    )  # fmt: skip
    assert stats.network_calls == L - 1
    assert bool((x[:, 0] == 1).all())
    truth = model.conditional({0: 1})
    got = empirical(x, N, [1, 2])
    assert tv(got, truth) < _null_tv_quantile(truth, n)
    assert chi2_pvalue(got, truth, n) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_depend_only_on_seed_and_index(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    kw = dict(
        graph=GRAPH, schedule=LogLinear(), seq_len=L, predictor="first_hitting", seed=3, backend=backend
    )
    big = sample(model, 4, batch_size=40, **kw)
    small = sample(model, 4, batch_size=7, **kw)
    assert torch.equal(big[:7], small)
    g_big = sample(model, 4, batch_size=40, group_by_step=True, **kw)
    g_small = sample(model, 4, batch_size=7, group_by_step=True, **kw)
    assert torch.equal(g_big[:7], g_small)


@needs_rust
def test_backends_draw_the_same_law() -> None:
    model = ExactScore(GRAPH, P0)
    n = 4000
    kw = dict(graph=GRAPH, schedule=LogLinear(), batch_size=n, seq_len=L, predictor="first_hitting")
    a = empirical(sample(model, 1, seed=1, backend="rust", temperature=0.7, top_p=0.9, **kw), N)
    b = empirical(sample(model, 1, seed=2, backend="torch", temperature=0.7, top_p=0.9, **kw), N)
    # two-sample chi-square via the pooled law
    pooled = (a + b) / 2
    assert chi2_pvalue(a, pooled, n) > 1e-3 and chi2_pvalue(b, pooled, n) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_by_step_makes_at_most_steps_calls(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    n = 4000
    kw = dict(graph=GRAPH, schedule=LogLinear(), batch_size=n, seq_len=L, predictor="first_hitting",
              group_by_step=True, backend=backend, return_stats=True, seed=8)  # fmt: skip
    x1, s1 = sample(model, 1, **kw)
    assert s1.network_calls == 1  # every position in one call: independent marginals, far from p0
    assert tv(empirical(x1, N), P0.reshape(-1)) > 0.2
    x64, s64 = sample(model, 64, **kw)
    assert s64.network_calls <= 64
    assert tv(empirical(x64, N), P0.reshape(-1)) < TV_FLOOR + 0.02


def test_first_hitting_refuses_the_uniform_graph() -> None:
    model = ExactScore(Uniform(N), P0)
    with pytest.raises(ValueError, match="has no MASK"):
        sample(model, 4, graph=Uniform(N), schedule=Geometric(), seq_len=L, predictor="first_hitting")
