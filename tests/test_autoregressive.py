"""The autoregressive baseline: exact NLL by brute force, causality, ancestral sampling, training plumbing."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from _tiny import tiny_run
from ddm.eval.metrics import exact_nll, gen_perplexity
from ddm.io import checkpoint
from ddm.model import ARModel, ModelConfig
from ddm.model.autoregressive import ancestral_sample, sequence_nll
from ddm.training import train
from safetensors.torch import load_file
from scipy.stats import chisquare

TINY = dict(hidden=16, heads=2, blocks=2, cond_dim=8, seq_len=4, dropout=0.0)


def _random_model(vocab: int, seed: int = 0, scale: float = 0.5, **kw) -> ARModel:
    torch.manual_seed(seed)
    model = ARModel(ModelConfig(**{**TINY, **kw}), vocab)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # every layer, zero-initialised ones included, so nothing is trivial
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def _all_sequences(vocab: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)  # (V^L, L)


def _manual_log_prob(model: ARModel, x: torch.Tensor) -> torch.Tensor:
    """Chain rule by hand: conditional i from a network call that sees only the prefix x_<i."""
    B, L = x.shape
    total = torch.zeros(B, dtype=torch.float64)
    for i in range(L):
        # the input x[:, : i + 1] holds x_i itself, but the model reads (BOS, x_<i) at row i
        logits = model(x[:, : i + 1])[:, i].double()  # (B, V)
        total += torch.log_softmax(logits, -1).gather(1, x[:, i : i + 1])[:, 0]
    return total  # (B,)


@pytest.mark.parametrize("vocab,length", [(3, 3), (2, 4), (4, 2)])
def test_probabilities_of_all_sequences_sum_to_one(vocab, length):
    model = _random_model(vocab, seed=vocab + length)
    xs = _all_sequences(vocab, length)
    with torch.no_grad():
        nll = sequence_nll(model, xs).double()  # (V^L,)
    total = torch.exp(-nll).sum()
    assert abs(float(total) - 1.0) < 1e-5
    # the distribution is far from uniform, so the sum is not 1 by accident
    assert float(nll.max() - nll.min()) > 0.5


def test_nll_equals_manual_chain_rule():
    model = _random_model(3, seed=1)
    xs = _all_sequences(3, 4)
    with torch.no_grad():
        nll = sequence_nll(model, xs).double()
        manual = -_manual_log_prob(model, xs)
    torch.testing.assert_close(nll, manual, atol=1e-5, rtol=1e-5)


def test_causal_future_tokens_do_not_change_earlier_predictions():
    model = _random_model(5, seed=2)
    x = torch.randint(0, 5, (8, 4), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 2:] = (y[:, 2:] + 1) % 5
    with torch.no_grad():
        a, b = model(x), model(y)
    # rows 0..2 see (BOS, x_1, x_2) at most: they must not move; row 3 sees x_3 and does
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-6, rtol=0)
    assert float((a[:, 3] - b[:, 3]).abs().max()) > 1e-3


def test_zero_initialised_model_is_uniform():
    torch.manual_seed(0)
    model = ARModel(ModelConfig(**TINY), 7).eval()
    x = torch.randint(0, 7, (5, 4))
    with torch.no_grad():
        nll = sequence_nll(model, x)
    torch.testing.assert_close(nll, torch.full((5,), 4 * math.log(7)), atol=1e-5, rtol=0)
    assert math.isclose(gen_perplexity(x, model), 7.0, rel_tol=1e-5)


def test_ancestral_sampling_matches_exact_law():
    vocab, length, n = 3, 2, 6000
    model = _random_model(vocab, seed=3, seq_len=2)
    xs = _all_sequences(vocab, length)
    with torch.no_grad():
        p = torch.exp(-sequence_nll(model, xs).double())  # (9,)
    samples = ancestral_sample(model, n, seed=11)
    assert samples.shape == (n, length) and samples.dtype == torch.long
    index = samples[:, 0] * vocab + samples[:, 1]  # position in the lexicographic order of xs
    counts = torch.bincount(index, minlength=vocab**length).double()
    # chi-square goodness of fit at a fixed seed; p < 1e-3 would reject a correct sampler 0.1% of the time
    assert chisquare(counts.numpy(), (n * p / p.sum()).numpy()).pvalue > 1e-3
    # and a sampler from the wrong law (uniform) is rejected by the same test
    assert chisquare(counts.numpy(), torch.full((9,), n / 9.0, dtype=torch.float64).numpy()).pvalue < 1e-6


def test_judge_perplexity_of_its_own_samples_is_its_entropy_rate():
    """E_{x ~ p}[-log p(x)] / L is the entropy rate H; gen perplexity of own samples -> exp(H)."""
    vocab, length, n = 4, 3, 3000
    model = _random_model(vocab, seed=4, scale=0.4, seq_len=length)
    xs = _all_sequences(vocab, length)
    with torch.no_grad():
        logp = -sequence_nll(model, xs).double()  # (V^L,)
    H = float(-(logp.exp() * logp).sum()) / length  # exact entropy per token, nats
    samples = ancestral_sample(model, n, seed=5)
    with torch.no_grad():
        per_seq = sequence_nll(model, samples).double() / length  # (n,)
    se = float(per_seq.std() / math.sqrt(n))
    gp = gen_perplexity(samples, model, batch_size=500)
    # Monte-Carlo tolerance: 4 standard errors of the mean NLL per token
    assert abs(math.log(gp) - H) < 4 * se
    assert se < 0.02  # the tolerance is tight: the test can fail
    assert math.isclose(math.log(gp), float(per_seq.mean()), rel_tol=1e-9)


def test_exact_nll_fields_and_errors():
    model = _random_model(3, seed=6)
    x = _all_sequences(3, 4)[:10]
    r = exact_nll(model, x, batch_size=3)
    with torch.no_grad():
        per_tok = sequence_nll(model, x).double() / 4
    assert math.isclose(r.nats_per_token, float(per_tok.mean()), rel_tol=1e-6)
    assert math.isclose(r.bits_per_token, r.nats_per_token / math.log(2), rel_tol=1e-12)
    assert math.isclose(r.perplexity, math.exp(r.nats_per_token), rel_tol=1e-12)
    assert math.isclose(r.stderr, float(per_tok.std() / math.sqrt(10)), rel_tol=1e-5)
    assert (r.tokens, r.sequences, r.seq_len, r.exact) == (40, 10, 4, True)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        exact_nll(model, torch.tensor([[0, 1, 3, 0]]))
    with pytest.raises(ValueError, match="longer than the judge"):
        exact_nll(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        exact_nll(model, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="vocab_size"):
        ARModel(ModelConfig(**TINY), 1)
    with pytest.raises(ValueError, match="temperature"):
        ancestral_sample(model, 2, temperature=0.0)
    with pytest.raises(ValueError, match="seq_len"):
        ancestral_sample(model, 2, seq_len=9)


def _ar_run(tmp_path, name, **kw):
    base = dict(objective="autoregressive", eval_every=2, save_every=2, dropout=0.1)
    return tiny_run(tmp_path / name, **{**base, **kw})


def test_train_saves_a_loadable_ar_checkpoint_and_resumes_exactly(tmp_path):
    path = train(_ar_run(tmp_path, "full"))
    cfg = checkpoint.read_config(path)
    assert cfg["objective"] == "autoregressive" and cfg["graph"] is None
    model = checkpoint.load(path)
    assert isinstance(model, ARModel) and not model.training
    assert model.vocab_size == model.tokenizer.vocab_size
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_bits_per_token" in r]
    assert [r["step"] for r in evals] == [2, 4]
    # the logged loss is the exact NLL per token: a fresh model starts at ln V
    assert abs(log[0]["loss"] - math.log(model.vocab_size)) < 0.05

    train(_ar_run(tmp_path, "split"), until_step=2)
    resumed = train(_ar_run(tmp_path, "split"), resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(path / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_resume_refuses_a_different_objective(tmp_path):
    train(_ar_run(tmp_path, "r", steps=2))
    with pytest.raises(ValueError, match="objective"):
        train(_ar_run(tmp_path, "r", steps=4, objective="diffusion"), resume=True)


def test_objective_is_validated():
    from ddm.training.config import TrainConfig

    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="gpt").validate()
