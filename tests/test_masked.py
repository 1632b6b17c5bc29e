"""The masked-diffusion objective (MDLM / MD4, SUBS output; docs/math.md section 7) and stratified times."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ddm.eval import likelihood_bound
from ddm.graphs import Absorbing, Uniform
from ddm.losses import dwdse, masked_nelbo
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling import sample
from ddm.schedules import Geometric, LogLinear
from ddm.training.config import TrainConfig
from ddm.training.objective import keyed_loss, keyed_times

CFG = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16, dropout=0.0, subs=True)


def _subs_model(n: int = 7, seed: int = 0, **over) -> ScoreModel:
    torch.manual_seed(seed)
    model = ScoreModel(ModelConfig(**{**CFG.to_dict(), **over}), Absorbing(n), LogLinear())
    with torch.no_grad():  # a non-trivial output layer (it is zero-initialised)
        for p in model.final.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def test_subs_output_is_a_distribution_carried_over_at_unmasked_positions() -> None:
    model = _subs_model()
    x = torch.tensor([[7, 3, 7, 0, 7, 6]])  # MASK = 7
    lp = model.log_probs(x, torch.tensor([0.5]))  # (1, 6, 7)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(1, 6), atol=1e-6)
    for i, tok in ((1, 3), (3, 0), (5, 6)):  # unmasked: the token with probability 1
        assert lp[0, i, tok] == 0 and bool((lp[0, i].exp().sum() - 1).abs() == 0)
    # the log-score is the closed form log p(y | x_t) - log expm1(sigma_bar) at MASK rows (docs/math.md 7)
    sig = torch.tensor([0.5], dtype=torch.float64)
    l = model(x, sig)
    masked = x[0] == 7
    torch.testing.assert_close(l[0, masked, :7], lp[0, masked] - math.log(math.expm1(0.5)))  # float32
    assert bool((l[0, masked, 7] == 0).all()) and bool((l[0, ~masked] == 0).all())


def test_nelbo_is_the_dwdse_of_the_subs_score_sample_by_sample() -> None:
    """For a SUBS model the score entropy at a MASK is -log p(x0 | x_t) / expm1(sigma_bar): the masked
    NELBO and the DWDSE of its closed-form score agree for every (t, x_t), not only in expectation."""
    model = _subs_model()
    graph, schedule = model.graph, model.schedule
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 7, (64, 16), generator=g)
    t = torch.rand(64, generator=g, dtype=torch.float64)
    u = torch.rand(64, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        a = masked_nelbo(model.log_probs, graph, schedule, x0, t=t, u=u)
        b = dwdse(model, graph, schedule, x0, t=t, u=u)
    assert bool((a > 0).any())
    torch.testing.assert_close(a.double(), b.double(), rtol=2e-5, atol=1e-5)  # float32 outputs


def _exact_subs(p0: torch.Tensor):
    """An exact SUBS model of a law `p0` over `N^L`: `p(x0^i | x_t)` is the conditional of `p0` on the
    unmasked positions of `x_t` (the absorbing posterior does not depend on sigma_bar)."""
    n, length = p0.shape[0], p0.dim()
    states = torch.cartesian_prod(*[torch.arange(n)] * length).reshape(-1, length)  # (S, L)
    flat = p0.reshape(-1)

    def log_probs(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*x.shape, n, dtype=torch.float64)
        for b in range(x.shape[0]):
            seen = x[b] != n
            ok = (states[:, seen] == x[b, seen]).all(-1)  # (S,) sequences consistent with x_t
            w = flat * ok
            for i in range(length):
                if seen[i]:
                    out[b, i] = -torch.inf
                    out[b, i, x[b, i]] = 0.0
                else:
                    marg = torch.zeros(n, dtype=torch.float64).index_add_(0, states[:, i], w)
                    out[b, i] = torch.log(marg / marg.sum())
        return out

    def log_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        l = log_probs(x, sig) - torch.log(torch.expm1(sig))[:, None, None]
        l = torch.cat([l, torch.zeros_like(l[..., :1])], -1)
        return torch.where((x == n)[..., None], l, torch.zeros_like(l))

    return log_probs, log_score


def test_nelbo_and_dwdse_bounds_of_the_same_exact_model_agree() -> None:
    from exact_scores import correlated_law

    p0 = correlated_law(3, 3)
    log_probs, log_score = _exact_subs(p0)
    graph, schedule = Absorbing(3), LogLinear()
    data = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 1], [2, 2, 2]])

    class Subs:  # what likelihood_bound reads of a masked-diffusion model
        config = ModelConfig(subs=True)

        def __call__(self, x, s):
            return log_score(x, s)

        def log_probs(self, x, s):
            return log_probs(x, s)

    nelbo = likelihood_bound(Subs(), data, num_t=64, graph=graph, schedule=schedule, seq_len=3, seed=4)
    dw = likelihood_bound(log_score, data, num_t=64, graph=graph, schedule=schedule, seq_len=3, seed=4)
    assert nelbo.nats_per_token == pytest.approx(dw.nats_per_token, rel=1e-9)
    # and both bound the exact NLL of each block (the law of the prior-started model, docs/math.md 4)
    e = 1e-3
    nll = -torch.log((1 - e) * p0[tuple(data.T)] + e / 27).mean() / 3
    assert nelbo.nats_per_token > float(nll) - 4 * nelbo.stderr


def test_masked_nelbo_refuses_the_uniform_graph() -> None:
    with pytest.raises(ValueError, match="absorbing"):
        masked_nelbo(lambda x, s: x, Uniform(4), Geometric(), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="absorbing"):
        ScoreModel(CFG, Uniform(4), Geometric())
    with pytest.raises(ValueError, match="objective 'masked' needs graph 'absorbing'"):
        TrainConfig(objective="masked", graph="uniform").validate()
    with pytest.raises(ValueError, match="t_sampling"):
        TrainConfig(t_sampling="sobol").validate()


def test_time_independent_subs_model_samples_with_the_cache() -> None:
    model = _subs_model(time_conditioning=False)
    assert model.time_independent
    x, stats = sample(model, 64, batch_size=3, seq_len=16, seed=0, return_stats=True)
    assert x.shape == (3, 16) and bool((x < 7).all())
    assert stats.rows_evaluated <= 3 * (16 + 1)  # a row is re-evaluated only when a token unmasked
    y = sample(model, 64, batch_size=3, seq_len=16, seed=0, cache=False)
    assert torch.equal(x, y)  # the cache is exact


def test_stratified_times_one_per_stratum_and_split_invariant() -> None:
    rows = torch.arange(32)
    t = keyed_times(5, 7, rows, 1e-3, t_sampling="stratified", batch_size=32)
    u = (t - 1e-3) / (1 - 1e-3)
    assert sorted(torch.floor(u * 32).long().tolist()) == list(range(32))  # one in each stratum
    halves = torch.cat(
        [keyed_times(5, 7, r, 1e-3, t_sampling="stratified", batch_size=32) for r in (rows[:13], rows[13:])]
    )
    assert torch.equal(t, halves)
    assert not torch.equal(t, keyed_times(5, 8, rows, 1e-3, t_sampling="stratified", batch_size=32))
    uniform = keyed_times(5, 7, rows, 1e-3)
    assert not torch.equal(t, uniform)


def test_keyed_masked_loss_is_split_invariant() -> None:
    model = _subs_model()
    x0 = torch.randint(0, 7, (6, 16), generator=torch.Generator().manual_seed(0))
    kw = dict(seed=3, step=9, eps_t=1e-3, objective="masked", t_sampling="stratified", batch_size=6)
    with torch.no_grad():
        whole = keyed_loss(model.log_probs, model.graph, model.schedule, x0, rows=torch.arange(6), **kw)
        parts = torch.cat(
            [keyed_loss(model.log_probs, model.graph, model.schedule, x0[i:j], rows=torch.arange(i, j), **kw)
             for i, j in ((0, 2), (2, 6))]
        )  # fmt: skip
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)


# --- t_sampling = "masks": masked counts first, the time given the count, importance-weighted --------------


def _toy_log_fn(n: int):
    """A fixed `log p(x0 | x_t)` of a time-conditioned model on a short sequence: it reads the tokens of
    x_t (so the masked set matters) and the noise level (so t matters); time-independent when `c_t = 0`."""
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(n + 1, n, generator=gen, dtype=torch.float64)  # a token's own logits, MASK included
    V = torch.randn(n, generator=gen, dtype=torch.float64)

    def log_fn(x_t: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        left = torch.roll(x_t, 1, dims=1)  # each position also sees its left neighbour
        logits = W[x_t] + 0.5 * W[left] + torch.tanh(sigma_bar.to(torch.float64))[:, None, None] * V
        return torch.log_softmax(logits, dim=-1).to(torch.get_default_dtype())

    return log_fn


def _exact_integral(log_fn, schedule, x0: torch.Tensor, mask_id: int) -> float:
    """`int_0^1 E[f(t, x_t)] dt` of the masked NELBO's integrand for one sequence, by enumerating the
    masked sets and Gauss-Legendre in `m = 1 - exp(-sigma_bar)`: `f dt = sum_{i in S} NLL_i / m dm` times
    the probability `m^|S| (1 - m)^(L - |S|)` of the set S (docs/math.md section 4.6)."""
    L = x0.shape[1]
    one = torch.ones((), dtype=torch.float64)
    m0, m1 = (float(-torch.expm1(-schedule.total_noise(s * one))) for s in (0.0, 1.0))
    xg, wg = np.polynomial.legendre.leggauss(64)
    m = torch.tensor(m0 + (m1 - m0) * (xg + 1) / 2, dtype=torch.float64)  # (Q,)
    w = torch.tensor(wg * (m1 - m0) / 2, dtype=torch.float64)
    sb = -torch.log1p(-m)
    total = torch.zeros((), dtype=torch.float64)
    for bits in range(1, 2**L):
        S = torch.tensor([(bits >> i) & 1 for i in range(L)], dtype=torch.bool)
        k = int(S.sum())
        x_t = torch.where(S, torch.full_like(x0[0], mask_id), x0[0]).expand(len(m), L)
        nll = -log_fn(x_t, sb).to(torch.float64).gather(-1, x0.expand(len(m), L)[..., None])[..., 0]  # (Q, L)
        value = nll[:, S].sum(-1) * m ** (k - 1) * (1 - m) ** (L - k)  # (Q,)
        total = total + (w * value).sum()
    return float(total)


@pytest.mark.parametrize("schedule", [LogLinear(), Geometric(1e-3, 8.0)], ids=["loglinear", "geometric"])
def test_masks_training_design_is_unbiased_for_the_exact_integral(schedule) -> None:
    n, L, B, steps = 3, 4, 64, 150
    graph = Absorbing(n)
    assert graph.mask_id == n
    log_fn = _toy_log_fn(n)
    x0 = torch.tensor([[0, 2, 1, 2]])
    want = _exact_integral(log_fn, schedule, x0, graph.mask_id)
    per_step = []
    for step in range(steps):
        loss = keyed_loss(
            log_fn, graph, schedule, x0.expand(B, L), seed=11, step=step, rows=torch.arange(B), eps_t=1e-3,
            objective="masked", t_sampling="masks", batch_size=B,
        )  # fmt: skip
        per_step.append(loss.to(torch.float64).mean())
    per_step = torch.stack(per_step)  # iid across steps (the rows of a step are stratified together)
    got, se = float(per_step.mean()), float(per_step.std() / math.sqrt(steps))
    assert abs(got - want) < 4 * se, (got, want, se)
    assert se < 0.02 * want  # the check has teeth: a weight off by a factor c^(1/2) is far outside


def test_masks_design_has_a_lighter_tail_than_uniform_times() -> None:
    n, L, B = 3, 4, 4096
    graph, schedule = Absorbing(n), LogLinear()
    log_fn = _toy_log_fn(n)
    x0 = torch.tensor([[0, 2, 1, 2]]).expand(B, L)
    kw = dict(seed=2, step=0, rows=torch.arange(B), eps_t=1e-3, objective="masked", batch_size=B)
    masks = keyed_loss(log_fn, graph, schedule, x0, t_sampling="masks", **kw).to(torch.float64)
    uniform = keyed_loss(log_fn, graph, schedule, x0, t_sampling="uniform", **kw).to(torch.float64)
    # uniform t: a mask at small t carries the weight ~ 1 / t, a value with variance ~ log(1 / eps_t); the
    # masks design's values are bounded by S(L) c^(1/2) max NLL
    assert float(masks.var()) * 3 < float(uniform.var())
    assert float(masks.max()) < float(uniform.max())


def test_masks_draws_mask_exactly_the_count_and_are_split_invariant() -> None:
    from ddm.losses import mask_count_cdf
    from ddm.training.objective import keyed_mask_draws

    B, L = 48, 16
    rows = torch.arange(B)
    t, masked, weight = keyed_mask_draws(4, 3, rows, L, LogLinear(), batch_size=B)
    counts = masked.sum(-1)
    assert int(counts.min()) >= 1 and int(counts.max()) <= L
    # the counts follow q's stratified inverse CDF: one row in each of the B strata of q's CDF
    cum = mask_count_cdf(L)
    lo = torch.cat([torch.zeros(1, dtype=torch.float64), cum])[counts - 1] / cum[-1]
    hi = cum[counts - 1] / cum[-1]
    strata = torch.arange(B, dtype=torch.float64)
    v_lo, v_hi = strata / B, (strata + 1) / B
    assert all(
        any((lo[r] < v_hi[s]) and (hi[r] > v_lo[s]) for r in range(B)) for s in range(B)
    )  # every stratum is hit by some row's count interval
    assert bool((weight > 0).all()) and bool(((t >= 0) & (t <= 1)).all())
    parts = [keyed_mask_draws(4, 3, r, L, LogLinear(), batch_size=B) for r in (rows[:20], rows[20:])]
    for whole, *halves in zip((t, masked, weight), *parts, strict=True):
        assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(masked, keyed_mask_draws(4, 4, rows, L, LogLinear(), batch_size=B)[1])


def test_masks_t_sampling_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match="masks"):
        TrainConfig.from_dict({"graph": "uniform", "t_sampling": "masks"})
    with pytest.raises(ValueError, match="masks"):
        TrainConfig.from_dict({"objective": "block", "t_sampling": "masks"})
    with pytest.raises(ValueError, match="masks"):
        keyed_loss(
            _toy_log_fn(3), Uniform(3), LogLinear(), torch.zeros(2, 4, dtype=torch.long), seed=0, step=0,
            rows=torch.arange(2), eps_t=1e-3, objective="diffusion", t_sampling="masks", batch_size=2,
        )  # fmt: skip
    TrainConfig.from_dict({"objective": "masked", "t_sampling": "masks"}).validate()  # accepted


def test_masks_times_give_the_dwdse_of_the_subs_score_the_nelbo_value() -> None:
    # the same draws under both objectives: for a SUBS model the DWDSE of its closed-form score and the
    # NELBO are the same integrand (docs/math.md section 7.4), so the weighted rows agree
    model = _subs_model()
    x0 = torch.randint(0, 7, (8, 16), generator=torch.Generator().manual_seed(3))
    kw = dict(seed=5, step=2, rows=torch.arange(8), eps_t=1e-3, t_sampling="masks", batch_size=8)
    with torch.no_grad():
        nelbo = keyed_loss(model.log_probs, model.graph, model.schedule, x0, objective="masked", **kw)
        dwdse_ = keyed_loss(model, model.graph, model.schedule, x0, objective="diffusion", **kw)
    assert bool((nelbo > 0).all())
    torch.testing.assert_close(dwdse_.double(), nelbo.double(), rtol=2e-5, atol=1e-5)  # float32 outputs
