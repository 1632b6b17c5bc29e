"""Rust against torch: the law of every Rust kernel equals the torch reference's probabilities.

Each test puts many positions on one row (the same token and the same log-scores), draws once per
position with the Rust kernel (`ddm.sampling._native`, fixed seeds), and runs a chi-square
goodness-of-fit test against the exact probabilities of `ddm.sampling.torch_steps.*_probs` (or, for
corruption, `Graph.transition`). States are binned in order of decreasing probability so that every bin
expects at least 5 draws (dim 50258: the top states alone, the tail in aggregated bins). A state of
probability 0 must never be drawn. Threshold: p-value > 1e-4 (with fixed seeds the outcome is
deterministic; a correct kernel fails a single test with probability 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ddm import _rng
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, _native, torch_steps
from ddm.schedules import Geometric, LogLinear
from ddm.training import distributed
from scipy import stats

P_MIN = 1e-4

PROBS_FNS = {
    "euler": torch_steps.euler_step_probs,
    "analytic": torch_steps.analytic_step_probs,
    "denoise": torch_steps.denoise_step_probs,
}


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Chi-square goodness-of-fit p-value of `counts` against `probs` (bins merged by decreasing p)."""
    n = counts.sum()
    assert counts[probs <= 0].sum() == 0, "a state of probability 0 was drawn"
    obs, exp = [], []
    o = e = 0.0
    for j in np.argsort(-probs, kind="stable"):
        if probs[j] <= 0:
            break
        o += counts[j]
        e += n * probs[j]
        if e >= min_expected:
            obs.append(o)
            exp.append(e)
            o = e = 0.0
    if e > 0:  # the leftover tail joins the last bin
        obs[-1] += o
        exp[-1] += e
    obs_a, exp_a = np.asarray(obs), np.asarray(exp)
    if len(obs_a) < 2:
        return 1.0 if obs_a.sum() == n else 0.0
    stat = float(((obs_a - exp_a) ** 2 / exp_a).sum())
    return float(stats.chi2.sf(stat, len(obs_a) - 1))


def _copies(graph, x0: int, row: np.ndarray, batch: int, length: int):
    """`[B, L]` tokens all `x0` and `[B, L, dim]` log-scores all `row` (materialised, contiguous)."""
    x = torch.full((batch, length), x0, dtype=torch.int64)
    ls = torch.from_numpy(row.astype(np.float32)).expand(batch, length, graph.dim).contiguous()
    return x, ls


def _check_step(graph, kind: str, x0: int, row: np.ndarray, level: float, batch: int, length: int, seed: int):
    probs_fn = PROBS_FNS[kind]
    x, ls = _copies(graph, x0, row, batch, length)
    p = probs_fn(graph, x[:1, :1], ls[:1, :1], torch.tensor([level], dtype=torch.float64))[0, 0].numpy()
    assert abs(p.sum() - 1.0) < 1e-9
    out = _native.reverse_step(kind, graph, x, ls, torch.full((batch,), level, dtype=torch.float64), seed, 3)
    counts = np.bincount(out.numpy().ravel(), minlength=graph.dim)
    assert counts.shape == (graph.dim,), "Rust returned an id outside the graph"
    pv = chi2_pvalue(counts, p)
    assert pv > P_MIN, f"{graph!r} {kind} x0={x0} level={level}: chi-square p-value {pv:.2e}"
    return counts, p


GRAPHS = [Absorbing(4), Uniform(5), Absorbing(27), Uniform(28)]  # dims 5, 5, 28, 28


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize(
    "kind, level",
    [
        ("euler", 0.05),
        ("euler", 0.8),
        ("euler", 6.0),  # too large a step: the stay probability is clipped at 0
        ("analytic", 0.05),
        ("analytic", 0.8),
        ("analytic", 4.0),
        ("denoise", 1e-3),
        ("denoise", 0.5),
    ],
)
def test_step_law_matches_torch(graph, kind, level):
    rng = np.random.default_rng(graph.dim * 31 + int(level * 1000))
    row = rng.normal(size=graph.dim) * 1.5 - 1.0
    x0 = graph.dim - 1 if graph.absorbing else 1  # absorbing: MASK (the only state that moves)
    counts, _ = _check_step(graph, kind, x0, row, level, 4, 5000, seed=17)
    if graph.absorbing and kind == "denoise":
        assert counts[graph.mask_id] == 0


@pytest.mark.parametrize("graph", [Absorbing(4), Absorbing(27)], ids=repr)
@pytest.mark.parametrize("kind", _native.KINDS)
def test_absorbing_real_tokens_stay(graph, kind):
    rng = np.random.default_rng(1)
    x, ls = _copies(graph, 2, rng.normal(size=graph.dim), 2, 100)
    out = _native.reverse_step(kind, graph, x, ls, torch.full((2,), 0.7, dtype=torch.float64), 0, 0)
    assert torch.equal(out, x)


@pytest.mark.parametrize("graph", [Absorbing(50257), Uniform(50258)], ids=["absorbing", "uniform"])
def test_analytic_law_at_dim_50258(graph):
    # Log-scores shaped like a model's: a long tail plus 40 likely states. 1000 draws of one row.
    rng = np.random.default_rng(2)
    dim = graph.dim
    if graph.absorbing:
        row = rng.normal(size=dim) * 2.0 - 12.0
        row[rng.choice(dim - 1, 40, replace=False)] = rng.uniform(-3.0, -1.0, 40)
        s = np.exp(row[:-1].astype(np.float32).astype(np.float64)).sum()
        level = float(np.log1p(0.5 / s))  # (e^d - 1) S = 1/2: MASK stays with probability 1/2
        x0 = graph.mask_id
    else:
        row = rng.normal(size=dim) * 2.0
        row[rng.choice(dim, 40, replace=False)] = rng.uniform(8.0, 10.0, 40)
        level, x0 = 0.05, 123  # many states are clipped at 0, the rest share the mass with x0
    counts, p = _check_step(graph, "analytic", x0, row, level, 2, 500, seed=4)
    assert 0.05 < p[x0] < 0.95  # both staying and moving are tested
    assert (p == 0).sum() > 1000 or graph.absorbing  # uniform: the clipping is exercised


@pytest.mark.parametrize("graph", [Absorbing(50257), Uniform(50258)], ids=["absorbing", "uniform"])
def test_denoise_law_at_dim_50258(graph):
    rng = np.random.default_rng(3)
    row = rng.normal(size=graph.dim) * 2.0 - 4.0
    row[rng.choice(graph.dim - 1, 40, replace=False)] = rng.uniform(4.0, 6.0, 40)
    x0 = graph.mask_id if graph.absorbing else 7
    counts, _ = _check_step(graph, "denoise", x0, row, 0.3, 2, 500, seed=8)
    if graph.absorbing:
        assert counts[graph.mask_id] == 0


@pytest.mark.parametrize("graph", [Absorbing(4), Uniform(5), Absorbing(27), Uniform(28)], ids=repr)
@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
def test_corruption_law_matches_transition(graph, sigma):
    x0 = 2
    x = torch.full((4, 5000), x0, dtype=torch.int64)
    out = _native.corrupt(graph, x, torch.full((4,), sigma, dtype=torch.float64), seed=21, stream=3)
    counts = np.bincount(out.numpy().ravel(), minlength=graph.dim)
    p = graph.transition(torch.tensor([x0]), torch.tensor(sigma, dtype=torch.float64))[0].numpy()
    pv = chi2_pvalue(counts, p)
    assert pv > P_MIN, f"{graph!r} sigma={sigma}: chi-square p-value {pv:.2e}"


def test_absorbing_corruption_keeps_mask():
    g = Absorbing(6)
    x = torch.full((2, 50), g.mask_id, dtype=torch.int64)
    out = _native.corrupt(g, x, torch.tensor([0.0, 5.0], dtype=torch.float64), seed=0, stream=3)
    assert torch.equal(out, x)


# The forward corruption in Rust against its torch twins, keyed alike: the same tokens, bit for bit.
KEYED_GRAPHS = [Absorbing(5), Uniform(5), Absorbing(300), Uniform(300), Uniform(50257)]


def _clean(graph, batch: int, length: int, seed: int) -> torch.Tensor:
    """Clean tokens `[batch, length]`, with some MASK for the absorbing graph (MASK stays MASK)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, graph.vocab_size, (batch, length), generator=g)  # (B, L)
    if graph.absorbing:
        x[:, ::7] = graph.dim - 1
    return x


def _force_torch_corruption(monkeypatch):
    """Make the backend choice of `Sampler.add_noise` and of the keyed training loss pick torch, and make
    any call of the Rust corruption fail, so that the reference is certainly the torch path."""

    def refuse(*args, **kwargs):
        raise AssertionError("the torch reference ran the Rust corruption")

    monkeypatch.setattr("ddm.sampling.ops._native", lambda: None)
    monkeypatch.setattr("ddm.training.objective.native_available", lambda: False)
    monkeypatch.setattr("ddm.sampling.ops.RustOps.corrupt", refuse)


@pytest.mark.parametrize("graph", KEYED_GRAPHS, ids=repr)
@pytest.mark.parametrize("seed, seq_offset", [(0, 0), (7, 3), (2**63 + 12345, 1000)])
def test_corrupt_is_add_noise_bit_for_bit(graph, seed, seq_offset, monkeypatch):
    sampler = Sampler(graph, Geometric(1e-3, 10.0))
    x0 = _clean(graph, 24, 257, seed % 1000)  # B = 24: torch's vectorised expm1 and its tail
    t = torch.linspace(0.0, 1.0, 24, dtype=torch.float64)  # (B,): from no noise to the limit
    # add_noise itself runs the Rust kernel on the CPU now: its torch path is the reference
    _force_torch_corruption(monkeypatch)
    want = sampler.add_noise(x0, t, seed=seed, seq_offset=seq_offset)
    monkeypatch.undo()
    assert torch.equal(sampler.add_noise(x0, t, seed=seed, seq_offset=seq_offset), want)
    sigma = sampler.schedule.total_noise(t).to(torch.float64).contiguous()  # (B,) as add_noise has it
    got = _native.corrupt(graph, x0, sigma, seed, 0, seq_offset, stream=_rng.STREAM_FORWARD)
    assert torch.equal(got, want)
    assert (got != x0).any() and (got == x0).any()


@pytest.mark.parametrize("graph", KEYED_GRAPHS[:4], ids=repr)  # the loss needs [b, L, dim] log-scores
@pytest.mark.parametrize("seed, step, first_row", [(3, 9, 0), (2**40 + 1, 123456, 16)])
def test_corrupt_is_the_keyed_training_corruption_bit_for_bit(graph, seed, step, first_row, monkeypatch):
    seen = []

    def log_score_fn(x_t, sigma_bar):
        seen.append((x_t.clone(), sigma_bar.detach().clone()))
        return torch.zeros(*x_t.shape, graph.dim)  # (b, L, dim)

    x0 = _clean(graph, 16, 300, step % 1000)
    rows = torch.arange(first_row, first_row + 16)  # the contiguous global rows of a micro-batch
    # keyed_loss runs the Rust kernel on the CPU now: its torch path (the _rng uniforms) is the reference
    _force_torch_corruption(monkeypatch)
    want = distributed.keyed_loss(
        log_score_fn, graph, LogLinear(), x0, seed=seed, step=step, rows=rows, eps_t=1e-3
    )
    monkeypatch.undo()
    got_loss = distributed.keyed_loss(
        log_score_fn, graph, LogLinear(), x0, seed=seed, step=step, rows=rows, eps_t=1e-3
    )
    assert torch.equal(got_loss, want)
    (x_t, sigma_bar), (x_rust, _) = seen
    assert torch.equal(x_rust, x_t)
    sigma = sigma_bar.to(torch.float64)  # (b,), as the loss converts it
    got = _native.corrupt(graph, x0, sigma, seed, step, first_row, stream=distributed.STREAM_TRAIN_CORRUPT)
    assert torch.equal(got, x_t)
    assert (got != x0).any() and (got == x0).any()


def test_chi2_helper_rejects_a_wrong_law():
    # The test statistic has power: a 5% shift of mass between two states is detected at 20000 draws.
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.45, 0.35, 0.2])
    counts = np.bincount(rng.choice(3, 20000, p=q), minlength=3)
    assert chi2_pvalue(counts, p) < P_MIN
    assert chi2_pvalue(np.bincount(rng.choice(3, 20000, p=p), minlength=3), p) > P_MIN
