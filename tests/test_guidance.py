"""Issue 30: label conditioning and classifier-free / prompt guidance (ddm.sampling.guidance).

The guided one-step laws are checked against a brute-force computation on a tiny exact joint p(x, y),
on both backends; the extreme strengths stay finite; gamma 0 / 1 are the unguided samplers bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from ddm import sample
from ddm.errors import InvalidArgument
from ddm.graphs import Absorbing, Uniform
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling.guidance import Guided, guided_log_score
from ddm.sampling.ops import get_ops
from ddm.sampling.proposal import make_proposal
from ddm.sampling.torch_steps import step_probs
from ddm.schedules import LogLinear
from exact_scores import BACKENDS, ExactScore, chi2_pvalue, correlated_law, one_torch_thread  # noqa: F401

N, L, K = 3, 2, 2  # tokens, length, labels
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LabelledExact:
    """Exact log-scores of `p(x | y)` for a label y, and of the marginal `p(x)` for the null label K."""

    def __init__(self, graph) -> None:
        self.g = graph
        self.num_classes = K
        self.label_names = ["even", "odd"]
        laws = [correlated_law(N, L, seed=s, weight=w) for s, w in ((1, 0.8), (2, 0.3))]
        self.prior = torch.tensor([0.4, 0.6], dtype=torch.float64)
        self.joint = torch.stack(laws) * self.prior[:, None, None]  # (K, N, N)
        self.exact = [ExactScore(graph, laws[k]) for k in range(K)] + [ExactScore(graph, self.joint.sum(0))]
        self.seq_len = L

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        label = torch.full((x.shape[0],), K) if label is None else label.cpu()
        out = torch.empty(*x.shape, self.g.dim, dtype=torch.float64)
        sigma = sigma.reshape(-1).expand(x.shape[0])
        for k in torch.unique(label).tolist():
            rows = label == k
            out[rows] = self.exact[k](x[rows], sigma[rows])
        return out


def _clean_law(model: LabelledExact, x: torch.Tensor, label: int | None) -> torch.Tensor:
    """Brute force: `p(x0^i = v | x_t)` `[B, L, N]` for absorbing `x_t` (a MASK reveals nothing, a clean
    token is observed), under `p(x | y)` or, `label=None`, the marginal."""
    law = model.joint.sum(0) if label is None else model.joint[label]
    out = torch.zeros(x.shape[0], L, N, dtype=torch.float64)
    for b in range(x.shape[0]):
        for x0 in torch.cartesian_prod(*[torch.arange(N)] * L):
            if all(int(x[b, j]) in (N, int(x0[j])) for j in range(L)):
                for i in range(L):
                    out[b, i, x0[i]] += law[tuple(x0.tolist())]
    return out / out.sum(-1, keepdim=True)


def _brute_dcfg(model, x, y, gamma, sigma, dsigma) -> torch.Tensor:
    """The D-CFG analytic step law: `x_g ∝ x(.|y)^gamma x(.|null)^(1-gamma)`, then the absorbing
    posterior `P(v) = (e^d - 1) / expm1(sigma) x_g(v)`, `P(MASK) = 1 - sum` (docs/math.md 14.1)."""
    xg = _clean_law(model, x, y) ** gamma * _clean_law(model, x, None) ** (1 - gamma)
    xg = xg / xg.sum(-1, keepdim=True)
    move = math.expm1(dsigma) / math.expm1(sigma) * xg  # (B, L, N)
    probs = torch.cat([move, 1 - move.sum(-1, keepdim=True)], -1)
    keep = torch.nn.functional.one_hot(x, N + 1).to(torch.float64)
    return torch.where((x == N)[..., None], probs, keep)


def _brute_rates(model, graph, x, y, gamma, sigma, rate_dt) -> torch.Tensor:
    """The rate-form Euler step law (Nisonoff): `R_g = R(.|y)^gamma R(.|null)^(1-gamma)` off the diagonal,
    `R(x, v) = Q(x, v) s_v(x)`; `P(v) = rate_dt R_g(x, v)`, `P(x) = 1 - sum`."""
    sig = torch.full((x.shape[0],), sigma, dtype=torch.float64)
    s_c = torch.exp(model.exact[y](x, sig))
    s_u = torch.exp(model.exact[K](x, sig))
    q = graph.transp_rate(x, dtype=torch.float64).clamp(min=0)  # (B, L, dim) Q(x^i, v) off the diagonal
    r_c, r_u = q * s_c, q * s_u
    both = (r_c > 0) & (r_u > 0)  # a zero rate in either pass is a zero guided rate
    rate = torch.where(both, r_c.clamp(min=1e-300) ** gamma * r_u.clamp(min=1e-300) ** (1 - gamma), 0.0)
    rate = rate.scatter(-1, x[..., None], 0.0)
    probs = rate_dt * rate
    return probs.scatter(-1, x[..., None], 1 - probs.sum(-1, keepdim=True))


def _states(graph) -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(graph.dim)] * L).reshape(-1, L)


CASES = [  # graph, rule, step kind
    (Absorbing(N), "dcfg", "analytic"),
    (Absorbing(N), "rates", "euler"),
    (Uniform(N), "rates", "euler"),
]


@pytest.mark.parametrize(
    "graph, rule, kind", CASES, ids=["absorbing-dcfg", "absorbing-rates", "uniform-rates"]
)
@pytest.mark.parametrize("gamma", [0.5, 2.0, 4.0])
def test_guided_step_law_is_the_formula(graph, rule, kind, gamma):
    """Exact: the step probabilities of the guided log-score equal the brute-force guided law."""
    model = LabelledExact(graph)
    x = _states(graph)
    y = 1
    sigma, level = 0.9, (0.3 if kind == "analytic" else 0.02)
    guided = Guided(model, graph, torch.full((x.shape[0],), y), K, gamma, rule)
    probs = step_probs(
        kind, graph, x, guided(x, torch.full((x.shape[0],), sigma, dtype=torch.float64)), level
    )
    if rule == "dcfg":
        want = _brute_dcfg(model, x, y, gamma, sigma, level)
    else:
        want = _brute_rates(model, graph, x, y, gamma, sigma, level)
    assert bool((want >= 0).all())  # the level is small enough that Euler needs no clipping
    torch.testing.assert_close(probs, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "graph, rule, kind", CASES, ids=["absorbing-dcfg", "absorbing-rates", "uniform-rates"]
)
def test_guided_step_draws_follow_the_law(backend, graph, rule, kind):
    """Each backend's one guided step, drawn 20000 times from one state, matches the brute-force law."""
    model = LabelledExact(graph)
    x0 = torch.tensor([[N, 1]]) if graph.absorbing else torch.tensor([[2, 1]])
    n, gamma, sigma, level = 20000, 3.0, 0.9, (0.3 if kind == "analytic" else 0.1)
    x = x0.expand(n, L).contiguous()
    guided = Guided(model, graph, torch.zeros(1, dtype=torch.int64), K, gamma, rule)
    ls = (
        guided(x0, torch.tensor([sigma], dtype=torch.float64)).to(torch.float32).expand(n, L, -1).contiguous()
    )
    lev = torch.full((n,), level, dtype=torch.float64)
    out = get_ops(backend).reverse_step(kind, graph, x, ls, lev, seed=7, step=0, proposal=make_proposal())
    want = (_brute_dcfg(model, x0, 0, gamma, sigma, level) if rule == "dcfg"
            else _brute_rates(model, graph, x0, 0, gamma, sigma, level))[0, 0]  # fmt: skip
    freq = torch.bincount(out[:, 0], minlength=graph.dim).to(torch.float64) / n
    assert chi2_pvalue(freq, want, n) > 1e-3, (freq, want)
    assert bool((out[:, 1] == x0[0, 1]).all()) or not graph.absorbing


@pytest.mark.parametrize(
    "graph, rule", [(Absorbing(N), "dcfg"), (Absorbing(N), "rates"), (Uniform(N), "rates")]
)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 10.0, 100.0])
def test_extreme_gamma_stays_finite(graph, rule, gamma):
    model = LabelledExact(graph)
    x = _states(graph)
    sig = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
    ls = Guided(model, graph, torch.zeros(x.shape[0], dtype=torch.int64), K, gamma, rule)(x, sig)
    assert not bool(torch.isnan(ls).any()) and bool((ls < torch.inf).all())
    for kind, level in (("euler", 0.01), ("analytic", 0.2), ("denoise", 1e-4)):
        if kind == "denoise" and graph.absorbing:
            x_d = torch.full_like(x, N)  # the denoising step needs a token to move to: all MASK
            guided = Guided(model, graph, torch.zeros(x.shape[0], dtype=torch.int64), K, gamma, rule)
            p = step_probs(kind, graph, x_d, guided(x_d, sig), level)
        else:
            p = step_probs(kind, graph, x, ls, level)
        assert bool(torch.isfinite(p).all()) and bool((p >= 0).all())
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2], dtype=torch.float64))


def test_guided_log_score_handles_zero_probabilities():
    """`-inf` (probability 0) in either pass stays -inf, never NaN, at gamma > 1."""
    g = Absorbing(N)
    x = torch.tensor([[N, N]])
    l_c = torch.tensor([[[0.0, -torch.inf, 1.0, 0.0], [0.5, 0.2, -torch.inf, 0.0]]], dtype=torch.float64)
    l_u = torch.tensor([[[-torch.inf, 0.3, 1.0, 0.0], [0.1, 0.2, 0.0, 0.0]]], dtype=torch.float64)
    for rule in ("dcfg", "rates"):
        out = guided_log_score(g, x, l_c, l_u, torch.tensor([1.0], dtype=torch.float64), 5.0, rule)
        assert not bool(torch.isnan(out).any())
        assert bool(torch.isneginf(out[0, 0, :2]).all()) and bool(torch.isneginf(out[0, 1, 2]))


# ---- ScoreModel with labels, and ddm.sample ------------------------------------------------------------


def _labelled_model(graph=None, num_classes=3, **kw) -> ScoreModel:
    torch.manual_seed(0)
    names = [f"c{i}" for i in range(num_classes)] if num_classes else None
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=8, dropout=0.0,
                      num_classes=num_classes, label_names=names, **kw)  # fmt: skip
    m = ScoreModel(cfg, graph or Absorbing(5), LogLinear()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)  # a random network (zero-init layers would ignore the label)
    return m


def test_unlabelled_model_is_unchanged():
    """num_classes = 0 adds no parameter, and a labelled model's null label is its label-free call."""
    plain = _labelled_model(num_classes=0)
    assert not any("label" in k for k in plain.state_dict())
    m = _labelled_model()
    x = torch.randint(0, 6, (3, 8))
    sig = torch.tensor([0.5, 1.0, 2.0])
    with torch.no_grad():
        assert torch.equal(m(x, sig), m(x, sig, label=3))
        assert not torch.equal(m(x, sig, label=0), m(x, sig, label=1))
    with pytest.raises(InvalidArgument, match="without labels"):
        plain(x, sig, label=0)
    with pytest.raises(InvalidArgument, match="label ids"):
        m(x, sig, label=4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", ["analytic", "euler", "first_hitting", "confidence"])
def test_gamma_one_and_zero_are_the_plain_samplers(backend, predictor):
    m = _labelled_model()
    kw = dict(batch_size=3, seed=5, backend=backend, predictor=predictor)
    cond = sample(m, 4, label="c1", **kw)
    assert torch.equal(sample(m, 4, label="c1", guidance=1.0, **kw), cond)
    assert torch.equal(sample(m, 4, label=1, guidance=0.0, **kw), sample(m, 4, **kw))  # null label
    assert not torch.equal(sample(m, 4, label="c1", guidance=3.0, **kw), cond)


@pytest.mark.parametrize("backend", BACKENDS)
def test_guidance_is_seed_and_batch_split_invariant(backend):
    """Row i depends on (seed, i) and its own label only: the two passes never touch another row."""
    m = _labelled_model()
    labels = ["c0", "c2", "c1", "c2"]
    kw = dict(seed=11, backend=backend, guidance=2.5)
    full = sample(m, 5, batch_size=4, label=labels, **kw)
    assert torch.equal(sample(m, 5, batch_size=2, label=labels[:2], **kw), full[:2])
    assert torch.equal(sample(m, 5, batch_size=4, label=labels, **kw), full)
    other = sample(m, 5, batch_size=4, label=["c0", "c2", "c0", "c0"], **kw)
    assert torch.equal(other[:2], full[:2])


def test_cache_is_exact_under_guidance():
    """The cache reuses a row's guided output (both passes) and gives the uncached result."""
    m = _labelled_model(time_conditioning=False)
    kw = dict(batch_size=3, seed=2, label="c0", guidance=2.0, backend="torch")
    a, sa = sample(m, 16, cache=True, return_stats=True, **kw)
    b, sb = sample(m, 16, cache=False, return_stats=True, **kw)
    assert torch.equal(a, b)
    assert sa.rows_evaluated < sb.rows_evaluated


def test_prompt_guidance_masks_the_prompt():
    """Without a label, the unconditional pass is the model on the prompt turned into MASK."""
    m = _labelled_model(num_classes=0)
    calls = []

    def spy(x, sigma, label=None):
        calls.append(x.clone())
        return m(x, sigma)

    g = Guided(spy, m.graph, None, None, 2.0, "dcfg", torch.tensor([True, True] + [False] * 6))
    x = torch.tensor([[1, 2, 5, 5, 3, 5, 5, 5]])
    out = g(x, torch.tensor([1.0]))
    (both,) = calls
    assert torch.equal(both[0], x[0]) and torch.equal(both[1], torch.tensor([5, 5, 5, 5, 3, 5, 5, 5]))
    with torch.no_grad():
        u, c = m(both[1:], torch.tensor([1.0])), m(x, torch.tensor([1.0]))
    torch.testing.assert_close(out, guided_log_score(m.graph, x, c, u, torch.tensor([1.0]), 2.0, "dcfg"))
    # through sample: gamma 1 is the plain prefix sampler
    plain = sample(m, 4, batch_size=2, seed=3, prefix=[1, 2])
    assert torch.equal(sample(m, 4, batch_size=2, seed=3, prefix=[1, 2], guidance=1.0), plain)
    guided = sample(m, 4, batch_size=2, seed=3, prefix=[1, 2], guidance=3.0)
    assert torch.equal(guided[:, :2], torch.tensor([[1, 2], [1, 2]]))


def test_bad_input():
    m = _labelled_model()
    plain = _labelled_model(num_classes=0)
    with pytest.raises(InvalidArgument, match="without labels"):
        sample(plain, 2, label="c0")
    with pytest.raises(InvalidArgument, match="unknown label 'dog'"):
        sample(m, 2, label="dog")
    with pytest.raises(InvalidArgument, match="neither"):
        sample(m, 2, guidance=2.0)
    with pytest.raises(InvalidArgument, match=">= 0"):
        sample(m, 2, label="c0", guidance=-0.5)
    with pytest.raises(InvalidArgument, match="finite"):
        sample(m, 2, label="c0", guidance=float("nan"))
    with pytest.raises(InvalidArgument, match="absorbing"):
        sample(_labelled_model(Uniform(5)), 2, label="c0", guidance=2.0, guidance_rule="dcfg")
    with pytest.raises(InvalidArgument, match="absorbing"):
        sample(_labelled_model(Uniform(5), num_classes=0), 2, prefix=[1], guidance=2.0)
    with pytest.raises(InvalidArgument, match="batch_size=2"):
        sample(m, 2, batch_size=2, label=["c0"])


# ---- block models ----------------------------------------------------------------------------------


def _block_model(num_classes=3) -> ScoreModel:
    return _labelled_model(num_classes=num_classes, block_size=4, time_conditioning=False)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_block_sampler_guidance(kv_cache):
    """gamma 1 / 0 are the conditional / null-label block samplers bit for bit; the cache of keys and
    values (both passes) gives the recomputed result; rows are independent."""
    m = _block_model()
    kw = dict(batch_size=3, seed=4, max_len=12, kv_cache=kv_cache, backend="torch")
    cond = sample(m, 3, label="c2", **kw)
    assert torch.equal(sample(m, 3, label="c2", guidance=1.0, **kw), cond)
    assert torch.equal(sample(m, 3, label="c2", guidance=0.0, **kw), sample(m, 3, **kw))
    labels = ["c2", "c0", "c1"]
    guided = sample(m, 3, label=labels, guidance=3.0, **kw)
    assert not torch.equal(guided, sample(m, 3, label=labels, **kw))
    other = sample(m, 3, label=["c2", "c0", "c0"], guidance=3.0, **kw)
    assert torch.equal(other[:2], guided[:2])
    if kv_cache:
        recomputed = sample(m, 3, label=labels, guidance=3.0, **{**kw, "kv_cache": False})
        assert torch.equal(recomputed, guided)


def test_block_prompt_guidance_runs_both_passes():
    m = _block_model(num_classes=0)
    kw = dict(batch_size=2, seed=1, max_len=12, prefix=[1, 2, 3, 4, 0, 1], backend="torch")
    plain = sample(m, 3, **kw)
    assert torch.equal(sample(m, 3, guidance=1.0, **kw), plain)
    guided = sample(m, 3, guidance=4.0, **kw)
    assert torch.equal(guided[:, :6], plain[:, :6]) and not torch.equal(guided, plain)
    assert torch.equal(sample(m, 3, guidance=4.0, **{**kw, "kv_cache": False}), guided)
