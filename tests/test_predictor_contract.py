"""The contract every predictor keeps, as diffusers' `SchedulerCommonTest` holds every scheduler to one.

Every registered predictor, and `LeftToRight`, a toy predictor defined only here (one class and one
`register` call, which is all a new predictor takes), passes the same invariants:

- shapes, dtype, ids in range and no MASK left;
- seed, batch-split and thread invariance: row `i` depends only on `(seed, i)`;
- the config round trip (`Sampler.to_config` / `from_config`, and a `Predictor` object given to
  `ddm.sample` in place of its name and options);
- the scheduler-style `Sampler` loop gives `ddm.sample`'s tokens;
- torch / Rust parity: both backends draw from one law (a chi-square test of homogeneity), with no
  monkeypatching;
- the exact law where one is known (first hitting, confidence in random order one token per call, and
  the toy predictor: ancestral sampling left to right), against `p0` of `tests/exact_scores.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, predictors, sample
from ddm.sampling.predictors import Config, Predictor
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
from scipy import stats as scipy_stats
from test_exactness import _null_tv_quantile

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 3
P0 = correlated_law(N, L)


class LeftToRight(Predictor):
    """A toy predictor: unmask the leftmost MASK of each row per call, drawn from the model's conditional
    (ancestral sampling left to right: exact with exact scores)."""

    name = "left_to_right"
    needs_mask = True
    unmasking = True

    def max_index(self, grid):
        return None

    def total_calls(self, grid, n_free):
        return n_free

    def finished(self, grid, x, k):
        return not bool((x == grid.graph.mask_id).any())

    def step(self, grid, log_score, k, x, *, ops, seed, rows, out=None):
        masked = x == grid.graph.mask_id  # (B, L)
        first = masked.int().argmax(-1)  # (B,) the leftmost MASK
        where = torch.zeros_like(masked).scatter_(1, first[:, None], masked.any(-1)[:, None])  # (B, L)
        sigma = self.noise_level(grid, k, x, seed=seed, rows=rows, n_free=None)
        return ops.draw_masked(grid.graph, log_score, x, where, sigma, seed=seed, step=k, rows=rows,
                               proposal=self.proposal)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _toy_registered():
    predictors.register(LeftToRight)  # the one registry line of a new predictor
    yield
    predictors.unregister(LeftToRight.name)


# (name, options, graphs it runs on, exact law with exact scores)
CASES = [
    ("analytic", {}, ("absorbing", "uniform"), False),
    ("euler", dict(temperature=0.9), ("absorbing", "uniform"), False),
    ("first_hitting", {}, ("absorbing",), True),
    ("first_hitting", dict(group_by_step=True), ("absorbing",), False),
    ("confidence", dict(order="random", tokens_per_step=1), ("absorbing",), True),
    ("confidence", dict(entropy_bound=0.4, order="entropy"), ("absorbing",), False),
    ("remdm", dict(remask=0.3), ("absorbing",), False),
    ("left_to_right", {}, ("absorbing",), True),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _, _ in CASES]
GRAPHS = {"absorbing": (Absorbing(N), LogLinear()), "uniform": (Uniform(N), Geometric())}


def _runs(graphs):
    return [g for g in ("absorbing", "uniform") if g in graphs]


def test_every_registered_predictor_is_covered() -> None:
    assert {name for name, *_ in CASES} == set(predictors.names())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_ids_no_mask_seed_and_batch_split(case, backend: str) -> None:
    name, opts, graphs, _ = case
    for g in _runs(graphs):
        graph, schedule = GRAPHS[g]
        model = ExactScore(graph, P0)
        kw = dict(graph=graph, schedule=schedule, seq_len=L, seed=21, backend=backend, predictor=name, **opts)
        x = sample(model, 6, batch_size=9, **kw)
        assert x.dtype == torch.int64 and x.shape == (9, L)
        assert bool(((x >= 0) & (x < graph.vocab_size)).all())  # real ids: no MASK left
        assert torch.equal(x, sample(model, 6, batch_size=9, **kw))  # the seed decides
        assert torch.equal(x[:4], sample(model, 6, batch_size=4, **kw))  # row i: (seed, i) only
        assert not torch.equal(x, sample(model, 6, batch_size=9, **{**kw, "seed": 22}))


@needs_rust
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_thread_count_does_not_change_the_tokens(case, monkeypatch) -> None:
    name, opts, graphs, _ = case
    graph, schedule = GRAPHS[_runs(graphs)[0]]
    model = ExactScore(graph, P0)
    kw = dict(graph=graph, schedule=schedule, seq_len=L, seed=5, batch_size=40, backend="rust", **opts)
    monkeypatch.setenv("DDM_NUM_THREADS", "1")
    one = sample(model, 6, predictor=name, **kw)
    monkeypatch.setenv("DDM_NUM_THREADS", "2")
    assert torch.equal(one, sample(model, 6, predictor=name, **kw))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_config_round_trip_and_predictor_objects(case) -> None:
    name, opts, graphs, _ = case
    graph, schedule = GRAPHS[_runs(graphs)[0]]
    s = Sampler(graph, schedule, predictor=name, eps=1e-4, **opts)
    t = Sampler.from_config(json.loads(json.dumps(s.config)))
    assert t.config == s.config and t.predictor.config == s.predictor.config
    obj = predictors.get(name)(**opts)
    assert isinstance(obj.config, Config) and obj.options() == {**obj.options(), **opts}
    model = ExactScore(graph, P0)
    kw = dict(graph=graph, schedule=schedule, seq_len=L, seed=3, batch_size=6)
    assert torch.equal(sample(model, 5, predictor=obj, **kw), sample(model, 5, predictor=name, **opts, **kw))
    with pytest.raises(ValueError, match="config"):
        sample(model, 5, predictor=obj, top_k=2, **kw)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_sampler_loop_is_sample(case, backend: str) -> None:
    name, opts, graphs, _ = case
    for g in _runs(graphs):
        graph, schedule = GRAPHS[g]
        model = ExactScore(graph, P0)
        want = sample(model, 5, graph=graph, schedule=schedule, seq_len=L, batch_size=30, seed=8,
                      backend=backend, predictor=name, **opts)  # fmt: skip
        sampler = Sampler(graph, schedule, predictor=name, **opts)
        sampler.set_timesteps(5)
        x = sampler.init_noise(30, L, seed=8)
        k = 0
        with torch.no_grad():
            while not sampler.finished(x, k):
                sigma = sampler.noise_level(k, 30, x=x, seed=8)
                x = sampler.step(model(x, sigma), k, x, seed=8, backend=backend).prev_sample
                k += 1
        assert torch.equal(x, want), (name, g)


def _homogeneity_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square test that two samples of sequences come from one law."""
    ca, cb = (empirical(s, N) * s.shape[0] for s in (a, b))
    keep = (ca + cb) > 0
    table = torch.stack([ca[keep], cb[keep]]).numpy()
    return float(scipy_stats.chi2_contingency(table)[1])


@needs_rust
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_and_rust_draw_from_one_law(case) -> None:
    name, opts, graphs, _ = case
    n = 3000
    for g in _runs(graphs):
        graph, schedule = GRAPHS[g]
        model = ExactScore(graph, P0)
        kw = dict(graph=graph, schedule=schedule, seq_len=L, batch_size=n, seed=11, predictor=name, **opts)
        a, b = (sample(model, 8, backend=be, **kw) for be in ("torch", "rust"))
        assert not torch.equal(a, b)  # two random streams, not one
        assert _homogeneity_pvalue(a, b) > 1e-3, (name, g)


EXACT = [(c, i) for c, i in zip(CASES, CASE_IDS, strict=True) if c[3]]


@pytest.mark.parametrize("case", [c for c, _ in EXACT], ids=[i for _, i in EXACT])
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_law(case, backend: str) -> None:
    name, opts, _, _ = case
    graph, schedule = GRAPHS["absorbing"]
    model = ExactScore(graph, P0)
    n = 4000
    x = sample(model, 2, graph=graph, schedule=schedule, seq_len=L, batch_size=n, seed=13, backend=backend,
               predictor=name, **opts)  # fmt: skip
    p = P0.reshape(-1)
    got = empirical(x, N)
    assert tv(got, p) < _null_tv_quantile(p, n)
    assert chi2_pvalue(got, p, n) > 1e-3


def test_unknown_keywords_are_named() -> None:
    graph, schedule = GRAPHS["absorbing"]
    model = ExactScore(graph, P0)
    kw = dict(graph=graph, schedule=schedule, seq_len=L)
    with pytest.raises(ValueError, match=r"unknown option 'temprature'.*temperature"):
        sample(model, 2, temprature=0.5, **kw)
    with pytest.raises(ValueError, match="tokens_per_step is an option of predictor='confidence'"):
        sample(model, 2, predictor="analytic", tokens_per_step=2, **kw)
    sample(model, 2, predictor="analytic", order="confidence", group_by_step=False, **kw)  # defaults: no-ops
