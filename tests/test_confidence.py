"""Confidence-ordered parallel decoding (`predictor="confidence"`, docs/math.md section 9)."""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import sample
from ddm.sampling.ops import RustOps, TorchOps
from ddm.sampling.proposal import make_proposal
from ddm.schedules import Geometric, LogLinear
from exact_scores import (  # noqa: F401
    BACKENDS,
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    needs_rust,
    one_torch_thread,
    tv,
)
from test_exactness import _null_tv_quantile

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 3
P0 = correlated_law(N, L)
GRAPH = Absorbing(N)
KW = dict(graph=GRAPH, schedule=LogLinear(), seq_len=L, predictor="confidence")


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_order_one_token_per_call_is_exact(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    n = 4000
    x, stats = sample(model, 1, batch_size=n, order="random", tokens_per_step=1, seed=13, backend=backend,
                      return_stats=True, **KW)  # fmt: skip
    assert stats.network_calls == L
    got, p = empirical(x, N), P0.reshape(-1)
    d, floor = tv(got, p), _null_tv_quantile(p, n)
    print(f"confidence order=random k=1 {backend}: TV {d:.4f} (99.9% noise quantile {floor:.4f})")
    assert d < floor
    assert chi2_pvalue(got, p, n) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_commit_rules_set_the_number_of_calls(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    kw = dict(batch_size=64, seed=2, backend=backend, return_stats=True, **KW)
    for opts, calls in [
        (dict(tokens_per_step=2), 2),
        (dict(tokens_per_step=5), 1),
        (dict(threshold=1e-9), 1),  # every proposal is above it
        (dict(threshold=1.0), L),  # none is above it: one (the best) per call
        (dict(entropy_bound=0.0), L),  # sum H - max H = 0 only for one token (entropies are positive)
        (dict(entropy_bound=100.0), 1),
        (dict(order="margin", tokens_per_step=1), L),
        (dict(order="entropy", threshold=1e-9), 1),
        ({}, 2),  # steps = 2: ceil(3 / 2) then the last one
    ]:
        x, stats = sample(model, 2, **kw, **opts)
        assert stats.network_calls == calls, opts
        assert bool((x < N).all()), "a MASK is left"


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_depend_only_on_seed_and_index(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    kw = dict(seed=3, backend=backend, order="entropy", entropy_bound=0.5, temperature=0.8, **KW)
    assert torch.equal(sample(model, 4, batch_size=30, **kw)[:5], sample(model, 4, batch_size=5, **kw))


@needs_rust
def test_rust_and_torch_proposals_agree() -> None:
    g = torch.Generator().manual_seed(0)
    graph = Absorbing(200)
    x = torch.randint(0, 201, (4, 30), generator=g)
    x[:, ::2] = 200
    ls = (torch.randn(4, 30, 201, generator=g) * 3).float()
    for opts in (dict(), dict(temperature=0.5, top_k=20), dict(top_p=0.7, temperature=1.5)):
        proposal = make_proposal(**opts)
        common = dict(seed=1, step=0, rows=torch.arange(4), proposal=proposal)
        tr, sr = RustOps().propose(graph, ls, x, **common)
        tt, st = TorchOps().propose(graph, ls, x, **common)
        masked = x == 200
        assert torch.equal(tr[~masked], x[~masked]) and bool((tr[masked] < 200).all())
        # the statistics depend on the law only (not on the drawn token) except the token's probability
        torch.testing.assert_close(sr[..., 1:], st[..., 1:], rtol=1e-9, atol=1e-12)
        # the probability Rust reports for its token is torch's probability of that token
        probs = _torch_law(graph, ls, proposal)  # (B, L, N)
        want = probs.gather(-1, tr.clamp(max=199)[..., None])[..., 0]
        torch.testing.assert_close(sr[..., 0][masked], want[masked], rtol=1e-9, atol=1e-12)


def _torch_law(graph, ls, proposal):
    from ddm.sampling.proposal import transform_weights

    return transform_weights(torch.softmax(ls[..., :-1].double(), -1), proposal)


@needs_rust
def test_backends_draw_the_same_law() -> None:
    model = ExactScore(GRAPH, P0)
    n = 4000
    kw = dict(batch_size=n, order="confidence", tokens_per_step=2, temperature=0.8, **KW)
    a = empirical(sample(model, 1, seed=1, backend="rust", **kw), N)
    b = empirical(sample(model, 1, seed=2, backend="torch", **kw), N)
    pooled = (a + b) / 2
    assert chi2_pvalue(a, pooled, n) > 1e-3 and chi2_pvalue(b, pooled, n) > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tokens_per_step=0), "tokens_per_step"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(order="best"), "order"),
        (dict(order="random", threshold=0.5), "threshold"),
        (dict(tokens_per_step=2, threshold=0.5), "at most one"),
        (dict(entropy_bound=-1.0), "entropy_bound"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    model = ExactScore(GRAPH, P0)
    with pytest.raises(ValueError, match=match):
        sample(model, 2, **KW, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(tokens_per_step=2), dict(threshold=0.5), dict(group_by_step=True)])
def test_options_of_another_sampler_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        sample(ExactScore(GRAPH, P0), 2, graph=GRAPH, schedule=LogLinear(), seq_len=L, **kwargs)


@pytest.mark.parametrize("predictor", ["confidence", "first_hitting"])
def test_unmasking_predictors_refuse_the_uniform_graph(predictor: str) -> None:
    model = ExactScore(Uniform(N), P0)
    with pytest.raises(ValueError, match="has no MASK"):
        sample(model, 2, graph=Uniform(N), schedule=Geometric(), seq_len=L, predictor=predictor)
    with pytest.raises(ValueError, match="confidence"):
        sample(ExactScore(GRAPH, P0), 2, **{**KW, "predictor": "first_hitting"}, tokens_per_step=1)
