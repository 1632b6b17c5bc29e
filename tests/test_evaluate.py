"""The likelihood bound: the zero-init closed form, determinism, a trained model beats uniform, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ddm.eval import likelihood_bound, reconstruction_nll, text_blocks
from ddm.graphs import Absorbing, Uniform
from ddm.model import ModelConfig, ScoreModel
from ddm.schedules import Geometric, LogLinear
from ddm.tokenizers import CharTokenizer

CFG = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=32, dropout=0.0)


def test_zero_init_absorbing_bound_is_log_n_plus_prior():
    # Zero output layer + log-linear schedule: the integrand is (1 - eps) ln N per token at every t
    # (docs/math.md section 4), and the absorbing prior term KL(p_1|0 || pi) is e^{-sigma_bar(1)} ln N
    # = eps ln N
    # (ddm.graphs.Absorbing.prior_kl), so the bound is ln N: the zero-init model is the uniform law.
    N = 20
    model = ScoreModel(CFG, Absorbing(N), LogLinear())
    x = torch.randint(0, N, (64, 32), generator=torch.Generator().manual_seed(0))
    b = likelihood_bound(model, x, num_t=64, batch_size=512, seed=0)
    diffusion = (1 - 1e-3) * math.log(N)
    prior = 1e-3 * math.log(N)
    assert b.prior_nats_per_token == pytest.approx(prior, rel=1e-9)
    assert abs(b.nats_per_token - math.log(N)) < 4 * b.stderr
    assert abs(b.diffusion_nats_per_token - diffusion) < 4 * b.stderr
    assert b.stderr < 0.02 * diffusion
    assert b.nats_per_token == pytest.approx(b.diffusion_nats_per_token + b.prior_nats_per_token)
    assert b.bits_per_token == pytest.approx(b.nats_per_token / math.log(2))
    assert b.perplexity == pytest.approx(math.exp(b.nats_per_token))
    assert b.tokens == 64 * 32 and b.sequences == 64 and b.num_t == 64


def test_bound_is_seeded():
    model = ScoreModel(CFG, Uniform(6), Geometric())
    x = torch.randint(0, 6, (4, 16), generator=torch.Generator().manual_seed(1))
    a = likelihood_bound(model, x, num_t=4, seed=3)
    b = likelihood_bound(model, x, num_t=4, seed=3)
    c = likelihood_bound(model, x, num_t=4, seed=4)
    assert a == b and a.nats_per_token != c.nats_per_token


def test_one_chunk_has_no_standard_error_not_nan():
    model = ScoreModel(CFG, Uniform(6), Geometric())
    x = torch.randint(0, 6, (1, 16), generator=torch.Generator().manual_seed(1))
    b = likelihood_bound(model, x, num_t=2, seed=3)
    assert b.sequences == 1 and b.stderr is None and b.stderr_bits is None
    assert "+- n/a" in str(b) and "nan" not in str(b)
    assert json.loads(json.dumps(b.to_dict()))["stderr"] is None  # valid JSON: null, not NaN
    two = likelihood_bound(model, torch.cat([x, x.flip(1)]), num_t=2, seed=3)
    assert two.stderr > 0 and "+- n/a" not in str(two)


def test_exact_score_beats_zero_init_on_a_deterministic_source():
    # Data: every sequence is the constant token 0. The exact absorbing score is
    # p_0(y | context) / esigm1(sigma_bar) = [y = 0] / esigm1: its diffusion term is 0 and the bound is
    # the prior term eps ln N, far below the zero-init model's ln N.
    N, L = 5, 8
    graph = Absorbing(N)

    def exact(x, sigma):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        l = torch.full((*x.shape, N + 1), -1e4, dtype=torch.float64)
        l[..., 0] = -torch.log(torch.expm1(s))[:, None]
        return l.scatter(-1, x[..., None], 0.0)

    x = torch.zeros(16, L, dtype=torch.long)
    b = likelihood_bound(exact, x, num_t=32, graph=graph, schedule=LogLinear())
    assert b.diffusion_nats_per_token == pytest.approx(0.0, abs=1e-6)
    assert b.nats_per_token == pytest.approx(1e-3 * math.log(N), rel=1e-6)


def test_text_and_errors():
    tok = CharTokenizer("abc \n")
    model = ScoreModel(CFG, Absorbing(tok.vocab_size), LogLinear(), tokenizer=tok)
    b = likelihood_bound(model, "abc cab\n" * 20, num_t=2, seq_len=16)
    assert b.unit == "char" and "bits_per_char" in b.to_dict() and b.sequences == 10
    with pytest.raises(ValueError, match=r"'z'"):
        likelihood_bound(model, "abcz" * 20, num_t=2)
    with pytest.raises(ValueError, match="larger than the model's seq_len"):
        likelihood_bound(model, "abc " * 40, seq_len=64)
    with pytest.raises(ValueError, match="larger than the model's seq_len"):
        likelihood_bound(model, torch.zeros(2, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        text_blocks(model, "")
    with pytest.raises(ValueError, match="fewer than one block"):
        likelihood_bound(model, "abc", num_t=2)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        likelihood_bound(model, torch.full((1, 8), 9, dtype=torch.long))
    with pytest.raises(ValueError, match="num_t"):
        likelihood_bound(model, "abc " * 10, num_t=0, seq_len=8)


# ---- the bound is an upper bound for both graphs (issue 12, defect 2) ------------------------------------


def _gauss_legendre(f, a: float, b: float, panels: int = 64, nodes: int = 8) -> float:
    """Composite Gauss-Legendre quadrature of a vectorised `f` on `[a, b]`."""
    import numpy as np

    z, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(a, b, panels + 1)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    pts = (mid[:, None] + half[:, None] * z[None, :]).reshape(-1)
    return float((f(pts).reshape(panels, nodes) * w[None, :] * half[:, None]).sum())


def _exact_bound_terms(graph, schedule, p0: torch.Tensor, x0: int, panels: int = 64) -> dict[str, float]:
    """The bound's terms for one token `x0` with exact scores, by deterministic quadrature and enumeration.

    The diffusion term is `integral sigma(t) E_{x_t|x0}[DSE] dt = integral_{sigma_bar(0)}^{sigma_bar(1)}
    E[DSE] dsigma_bar`, integrated over `log sigma_bar` for the Geometric schedule and over `sigma_bar`
    for LogLinear (whose `sigma_bar(0)` is 0).
    """
    import numpy as np
    from exact_scores import ExactScore

    model = ExactScore(graph, p0)
    states = torch.arange(graph.dim)[:, None]  # every x_t once, (dim, 1)
    clean = torch.full((graph.dim, 1), x0)

    def expected_dse(sig: float) -> float:
        s = torch.full((graph.dim,), sig, dtype=torch.float64)
        dse = graph.score_entropy(model(states, s), s[:, None], states, clean)[:, 0]  # (dim,)
        w = graph.transition(torch.tensor(x0), torch.tensor(sig, dtype=torch.float64))  # p(x_t | x0)
        return float((w * dse).sum())

    s0 = float(schedule.total_noise(torch.tensor(0.0, dtype=torch.float64)))
    s1 = float(schedule.total_noise(torch.tensor(1.0, dtype=torch.float64)))
    if s0 > 0:
        diffusion = _gauss_legendre(
            lambda u: np.array([expected_dse(math.exp(v)) * math.exp(v) for v in u]),
            math.log(s0), math.log(s1), panels,
        )  # fmt: skip
    else:
        diffusion = _gauss_legendre(lambda u: np.array([expected_dse(v) for v in u]), 0.0, s1, panels)
    prior = float(graph.prior_kl(torch.tensor([[x0]]), torch.tensor(s1, dtype=torch.float64)).sum())
    recon = 0.0
    if s0 > 0:
        w = graph.transition(torch.tensor(x0), torch.tensor(s0, dtype=torch.float64))  # (dim,)
        nll = reconstruction_nll(model, graph, s0, clean, states)  # (dim,): -log D(x0 | y) for each y
        recon = float((w * nll).sum())
    return {"diffusion": diffusion, "prior": prior, "reconstruction": recon}


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_bound_is_an_upper_bound_for_every_x0(kind: str) -> None:
    """Deterministic: with exact scores the bound never lies below the NLL of the model, and is nearly tight.

    The NLL is that of the model's own law (for the absorbing graph, started from the matched prior).
    Without the reconstruction term the uniform graph's bound was 0.356080 / 1.608599 / 2.301510 against
    the true 0.356675 / 1.609438 / 2.302585: below the NLL for every `x0`.
    """
    graph, schedule = (Uniform(3), Geometric()) if kind == "uniform" else (Absorbing(3), LogLinear())
    p0 = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    for x0 in range(3):
        terms = _exact_bound_terms(graph, schedule, p0, x0)
        finer = _exact_bound_terms(graph, schedule, p0, x0, panels=128)
        assert abs(finer["diffusion"] - terms["diffusion"]) < 1e-9  # the quadrature has converged
        total = sum(terms.values())
        nll = -math.log(float(p0[x0]))
        if kind == "absorbing":
            # The bound is on the model's own law: the exact-score reverse process started from the
            # matched prior (1 - e) MASK + e Uniform(N) (Absorbing.prior_kl), which returns p0 from MASK
            # and keeps a real start token, so its law is (1 - e) p0 + e / N with e = e^{-sigma_bar(1)}.
            e = math.exp(-float(schedule.total_noise(torch.tensor(1.0, dtype=torch.float64))))
            nll = -math.log((1 - e) * float(p0[x0]) + e / 3)
        assert total >= nll - 1e-9, f"x0 = {x0}: bound {total:.6f} below the NLL {nll:.6f} ({terms})"
        if kind == "uniform":
            # tight: the limit law at sigma_bar(1) = 20 is uniform to e^-20
            assert total == pytest.approx(nll, abs=1e-7), terms
            # the defect: without the step from x0 to sigma_bar(0) the estimate is too low
            assert terms["diffusion"] + terms["prior"] < nll - 5e-4
        else:
            assert terms["reconstruction"] == 0.0  # sigma_bar(0) = 0: nothing to reconstruct
            assert total < nll + 2e-3, terms  # and close: the gap is of order e


def test_likelihood_bound_estimates_the_reconstruction_term() -> None:
    from exact_scores import ExactScore

    p0 = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    data = torch.tensor([0] * 1400 + [1] * 400 + [2] * 200)[:, None]  # (M, 1)
    graph, schedule = Uniform(3), Geometric()
    model = ExactScore(graph, p0)
    b = likelihood_bound(model, data, num_t=1, batch_size=4096, graph=graph, schedule=schedule, seq_len=1)
    s0 = float(schedule.total_noise(torch.tensor(0.0, dtype=torch.float64)))
    states = torch.arange(3)[:, None]
    mean, var = 0.0, 0.0
    for x0, count in ((0, 1400), (1, 400), (2, 200)):
        w = graph.transition(torch.tensor(x0), torch.tensor(s0, dtype=torch.float64))
        nll = reconstruction_nll(model, graph, s0, torch.full((3, 1), x0), states)
        m = float((w * nll).sum())
        mean += count * m / 2000
        var += count * float((w * (nll - m) ** 2).sum()) / 2000**2
    assert b.reconstruction_nats_per_token > 0
    assert abs(b.reconstruction_nats_per_token - mean) < 5 * math.sqrt(var)
    assert b.nats_per_token == pytest.approx(
        b.diffusion_nats_per_token + b.prior_nats_per_token + b.reconstruction_nats_per_token
    )
    absorbing = likelihood_bound(
        ExactScore(Absorbing(3), p0), data, num_t=1, graph=Absorbing(3), schedule=LogLinear(), seq_len=1
    )
    assert absorbing.reconstruction_nats_per_token == 0.0


def test_a_huge_bound_reports_infinite_perplexity() -> None:
    # a model far from the data (log-scores of 1e4) has a bound of thousands of nats per token: the
    # perplexity is inf, not an OverflowError
    graph = Absorbing(4)

    def bad(x, sigma):
        l = torch.full((*x.shape, 5), 1e4, dtype=torch.float64)
        return l.scatter(-1, x[..., None], 0.0)

    b = likelihood_bound(bad, torch.zeros(2, 4, dtype=torch.long), num_t=2, graph=graph, schedule=LogLinear())
    assert b.nats_per_token > 709 and b.perplexity == math.inf


# ---- the "masks" design: stratified masked counts, importance-weighted times (issue 17) --------------------


def _exact_absorbing_diffusion(model, graph, schedule, x0: torch.Tensor) -> float:
    """`integral sigma(t) E_{x_t|x0}[sum_i DSE_i] dt` for one short sequence `x0 [L]` with exact scores:
    every mask pattern enumerated, Gauss-Legendre quadrature over `sigma_bar` (over `log sigma_bar` for
    Geometric, whose `sigma_bar(0) > 0`)."""
    import itertools

    import numpy as np

    L = x0.shape[0]
    patterns = torch.tensor(list(itertools.product([0, 1], repeat=L)), dtype=torch.bool)  # (2^L, L)
    xs = torch.where(patterns, graph.mask_id, x0)  # (2^L, L) every x_t
    masked = patterns.sum(-1).to(torch.float64)  # (2^L,)

    def expected_dse(sig: float) -> float:
        s = torch.full((len(xs),), sig, dtype=torch.float64)
        dse = graph.score_entropy(model(xs, s), s[:, None], xs, x0.expand_as(xs)).sum(-1)  # (2^L,)
        m = -math.expm1(-sig)  # P(a position is masked)
        return float((m**masked * (1 - m) ** (L - masked) * dse).sum())

    s0 = float(schedule.total_noise(torch.tensor(0.0, dtype=torch.float64)))
    s1 = float(schedule.total_noise(torch.tensor(1.0, dtype=torch.float64)))
    if s0 > 0:
        f = lambda u: np.array([expected_dse(math.exp(v)) * math.exp(v) for v in u])  # noqa: E731
        return _gauss_legendre(f, math.log(s0), math.log(s1), panels=48)
    return _gauss_legendre(lambda u: np.array([expected_dse(v) for v in u]), 0.0, s1, panels=48)


@pytest.mark.parametrize("schedule", [LogLinear(), Geometric()], ids=["loglinear", "geometric"])
def test_masks_design_is_unbiased_against_the_exact_integral(schedule) -> None:
    """Exact scores of a correlated law over 3 positions: the mean of the "masks" estimate over 3000
    independent copies of a sequence matches the diffusion integral computed by enumeration and
    quadrature, within 4.5 standard errors (a weight off by (n + 1) / n = 4/3 would be 60 away)."""
    from exact_scores import ExactScore, correlated_law

    graph = Absorbing(3)
    model = ExactScore(graph, correlated_law(3, 3, seed=0))
    x0 = torch.tensor([0, 1, 0])
    exact = _exact_absorbing_diffusion(model, graph, schedule, x0) / 3
    b = likelihood_bound(
        model, x0.expand(3000, 3), num_t=2, batch_size=6000, graph=graph, schedule=schedule, design="masks"
    )
    assert b.design == "masks" and b.calls <= 6000
    assert abs(b.diffusion_nats_per_token - exact) < 4.5 * b.stderr, (b.diffusion_nats_per_token, exact)
    assert b.stderr < 0.01 * exact
    # the uniform strata estimate the same integral, with a larger spread here
    s = likelihood_bound(
        model, x0.expand(3000, 3), num_t=2, batch_size=6000, graph=graph, schedule=schedule, design="strata"
    )
    assert abs(s.diffusion_nats_per_token - exact) < 4.5 * s.stderr
    assert s.design == "strata" and s.calls == 6000


def test_masks_design_agrees_with_strata_on_a_network() -> None:
    # a random time-conditioned network (its output is not a true score): both designs are unbiased for
    # the same integral, whatever the model
    torch.manual_seed(0)
    model = ScoreModel(CFG, Absorbing(6), LogLinear())
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 6, (48, 12), generator=torch.Generator().manual_seed(3))
    m = likelihood_bound(model, x, num_t=16, batch_size=768, seed=1, design="masks")
    s = likelihood_bound(model, x, num_t=16, batch_size=768, seed=1, design="strata")
    # the same blocks: the spread over blocks is shared, so this is conservative
    assert abs(m.nats_per_token - s.nats_per_token) < 4 * math.hypot(m.stderr, s.stderr)
    assert likelihood_bound(model, x, num_t=16, batch_size=768).design == "masks"  # the default here


def test_design_errors() -> None:
    model = ScoreModel(CFG, Uniform(6), Geometric())
    x = torch.randint(0, 6, (2, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="absorbing graph"):
        likelihood_bound(model, x, num_t=2, design="masks")
    with pytest.raises(ValueError, match="design must be one of"):
        likelihood_bound(model, x, num_t=2, design="antithetic")
    assert likelihood_bound(model, x, num_t=2).design == "strata"
