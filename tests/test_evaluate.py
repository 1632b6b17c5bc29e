"""The likelihood bound: the zero-init closed form, determinism, a trained model beats uniform, errors."""

from __future__ import annotations

import math

import pytest
import torch
from ddm.eval import likelihood_bound, text_blocks
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
