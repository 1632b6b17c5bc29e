"""Prompt / response pairs (issue 31): reading, EOS padding, the loss masks of every objective, the
conditional bound, training and resume on pairs, and LLaDA's random lengths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _tiny import tiny_run
from ddm.data.pairs import PairCorpus, encode_pairs, keyed_length, load_pairs, pair_masks, read_jsonl_pairs
from ddm.errors import DataError, InvalidArgument
from ddm.eval.bound import conditional_bound
from ddm.graphs import Absorbing, Uniform
from ddm.io import checkpoint as ckpt
from ddm.model import ModelConfig, ScoreModel
from ddm.schedules import LogLinear
from ddm.tokenizers import CharTokenizer
from ddm.training import train
from ddm.training.config import TrainConfig
from ddm.training.objective import keyed_loss
from safetensors.torch import load_file

EOS = "\x03"
TOK = CharTokenizer("abcdefgh?=" + EOS, eos=EOS)
L = 16


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs_file(tmp_path, n=40):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        size = int(torch.randint(1, 5, (1,), generator=g))
        a = "".join("abcd"[int(i)] for i in torch.randint(0, 4, (size,), generator=g))
        rows.append({"prompt": a + "=", "response": a[::-1]})  # reverse the prompt
    return _write(tmp_path / "pairs.jsonl", rows)


# --- reading and bad input ---------------------------------------------------------------------------


def test_bad_lines_are_named(tmp_path):
    good = {"prompt": "ab", "response": "c"}
    cases = [
        ([good, {"prompt": "ab"}], "line 2 has no field 'response'"),
        ([{"response": "c"}], "line 1 has no field 'prompt'"),
        ([good, good, {"prompt": "a", "response": ""}], "line 3: field 'response' is empty"),
        ([good, {"prompt": 3, "response": "c"}], "field 'prompt' must be a string"),
    ]
    for rows, message in cases:
        with pytest.raises(DataError, match=message):
            read_jsonl_pairs(_write(tmp_path / "bad.jsonl", rows))
    (tmp_path / "nojson.jsonl").write_text('{"prompt": "a", "response": "b"}\n\n{oops\n')
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        read_jsonl_pairs(tmp_path / "nojson.jsonl")
    long = _write(tmp_path / "long.jsonl", [good, {"prompt": "a" * 17, "response": "b"}])
    with pytest.raises(DataError, match=r"line 2: the prompt is 17 tokens, longer than seq_len = 16"):
        load_pairs(long, seq_len=L, tokenizer=TOK.to_config())
    full = _write(tmp_path / "full.jsonl", [{"prompt": "a" * 8, "response": "b" * 8}])
    with pytest.raises(DataError, match="line 1: prompt \\(8\\) \\+ response \\(8\\) \\+ EOS = 17 tokens"):
        load_pairs(full, seq_len=L, tokenizer=TOK.to_config())
    with pytest.raises(DataError, match="no end-of-sequence token"):
        encode_pairs([("a", "b")], CharTokenizer("ab"), L)


def test_pairs_are_padded_with_eos_and_masked_after_the_prompt():
    p = encode_pairs([("ab=", "cd"), ("h", "abcdefg")], TOK, L)
    eos = TOK.eos_id
    assert TOK.decode(p.tokens[0, :5].tolist()) == "ab=cd"
    assert (p.tokens[0, 5:] == eos).all() and p.tokens[1, 8] == eos
    assert p.prompt_len.tolist() == [3, 1] and p.end.tolist() == [6, 9]
    noised, scored = pair_masks(p.prompt_len, p.end, L, supervise_padding=True)
    assert torch.equal(noised, scored)
    assert noised[0].tolist() == [False] * 3 + [True] * 13
    noised, scored = pair_masks(p.prompt_len, p.end, L, supervise_padding=False)
    assert noised[0].tolist() == [False] * 3 + [True] * 13
    assert scored[0].tolist() == [False] * 3 + [True] * 3 + [False] * 10  # response and its first EOS


def test_pair_corpus_rows_are_keyed_and_the_tail_is_held_out(tmp_path):
    corpus = load_pairs(_pairs_file(tmp_path), seq_len=L, val_fraction=0.25)
    assert isinstance(corpus, PairCorpus) and corpus.n_val_pairs == 10 and corpus.n_train_pairs == 30
    rows = torch.arange(8)
    whole = corpus.batch_at(L, 3, 5, rows)
    parts = torch.cat([corpus.batch_at(L, 3, 5, rows[:3]), corpus.batch_at(L, 3, 5, rows[3:])])
    assert torch.equal(whole, parts)
    train_set = {tuple(r) for r in corpus.pairs.tokens[:30].tolist()}
    assert all(tuple(r) in train_set for r in whole.tolist())
    assert torch.equal(corpus.val_blocks(L), corpus.pairs.tokens[30:])
    noised, scored = corpus.masks_at(L, 3, 5, rows)
    # the prompt ends at the '=' of each row
    eq = corpus.tokenizer.encode("=")[0]
    first_noised = noised.int().argmax(-1)
    assert torch.equal(whole.gather(1, (first_noised - 1)[:, None])[:, 0], torch.full((8,), eq))


# --- the loss masks ------------------------------------------------------------------------------------

OBJECTIVES = [
    ("diffusion", "uniform", Absorbing(11)),
    ("diffusion", "uniform", Uniform(11)),
    ("masked", "uniform", Absorbing(11)),
    ("masked", "masks", Absorbing(11)),
    ("diffusion", "masks", Absorbing(11)),
    ("block", "uniform", Absorbing(11)),
]


def _recording_fn(kind, graph, record):
    """A model function whose output is a leaf (to read the loss's gradient per position) that records
    the x_t it is given."""
    width = graph.vocab_size if kind in ("masked", "block") else graph.dim
    out = torch.randn(4, L, width, generator=torch.Generator().manual_seed(1))
    if kind in ("masked", "block"):
        out = torch.log_softmax(out, -1)
    out.requires_grad_(True)

    def fn(x_t, sigma, x0=None):
        record.append(x_t.clone())
        return out

    return fn, out


def _batch():
    p = encode_pairs([("abc=", "hgf"), ("a=", "bbbbbb"), ("ddddd=", "c"), ("=", "abcdefgh")], TOK, L)
    return p.tokens, *pair_masks(p.prompt_len, p.end, L, supervise_padding=False)


@pytest.mark.parametrize("kind,t_sampling,graph", OBJECTIVES)
def test_the_prompt_is_never_noised_and_never_scored(kind, t_sampling, graph):
    x0, noised, scored = _batch()
    seen_noise = torch.zeros_like(noised)
    for step in range(12):
        record = []
        fn, out = _recording_fn(kind, graph, record)
        loss = keyed_loss(
            fn, graph, LogLinear(), x0, seed=0, step=step, rows=torch.arange(4), objective=kind,
            t_sampling=t_sampling, batch_size=4, block_size=4, noised=noised, scored=scored,
        )  # fmt: skip
        loss.sum().backward()
        (x_t,) = record
        assert torch.equal(x_t[~noised], x0[~noised]), "a prompt token was noised"
        seen_noise |= x_t != x0
        grad = out.grad.abs().sum(-1)  # (b, L)
        assert (grad[~scored] == 0).all(), "a prompt or padding position was scored"
    assert seen_noise[noised].float().mean() > 0.3  # the response and its padding are noised


@pytest.mark.parametrize("kind,t_sampling,graph", OBJECTIVES)
def test_all_ones_masks_give_todays_loss_bit_for_bit(kind, t_sampling, graph):
    x0 = torch.randint(0, 11, (4, L), generator=torch.Generator().manual_seed(2))
    ones = torch.ones(4, L, dtype=torch.bool)
    kw = dict(seed=5, step=3, rows=torch.arange(4), objective=kind, t_sampling=t_sampling, batch_size=4)
    fn, _ = _recording_fn(kind, graph, [])
    plain = keyed_loss(fn, graph, LogLinear(), x0, block_size=4, **kw)
    masked = keyed_loss(fn, graph, LogLinear(), x0, block_size=4, noised=ones, scored=ones, **kw)
    assert torch.equal(plain, masked)


def test_the_loss_is_normalised_over_scored_tokens_and_masks_are_checked():
    x0, noised, scored = _batch()
    fn, _ = _recording_fn("masked", Absorbing(11), [])
    kw = dict(seed=0, step=1, rows=torch.arange(4), objective="masked")
    a = keyed_loss(fn, Absorbing(11), LogLinear(), x0, noised=noised, scored=scored, **kw)
    # the same positions counted with every noised one scored: only the normaliser n differs
    all_scored = keyed_loss(fn, Absorbing(11), LogLinear(), x0, noised=noised, scored=noised, **kw)
    n_a, n_b = scored.sum(-1), noised.sum(-1)
    assert a.shape == (4,) and torch.isfinite(a).all() and not torch.equal(a, all_scored)
    with pytest.raises(InvalidArgument, match="noised must be a bool tensor"):
        keyed_loss(fn, Absorbing(11), LogLinear(), x0, noised=noised.int(), **kw)
    with pytest.raises(InvalidArgument, match="at least one position both noised and scored"):
        keyed_loss(fn, Absorbing(11), LogLinear(), x0, noised=torch.zeros_like(noised), **kw)
    assert (n_a <= n_b).all()


def test_the_masked_loss_is_the_conditional_bound_of_the_response():
    """The training loss with the prompt mask, unnormalised and averaged over its keyed draws, estimates
    the bound of the response given the prompt that `conditional_bound` computes (same model)."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=L, dropout=0.0, subs=True)
    model = ScoreModel(cfg, Absorbing(11), LogLinear()).eval()
    with torch.no_grad():
        for p in model.final.parameters():
            p.normal_(0.0, 0.3)
    x0, noised, _ = _batch()
    steps = 300
    with torch.no_grad():
        draws = torch.stack([
            keyed_loss(
                model.log_probs, model.graph, model.schedule, x0, seed=1, step=s, rows=torch.arange(4),
                objective="masked", noised=noised, scored=noised,
            ) * (noised.sum(-1) / L)
            for s in range(steps)
        ]).double()  # fmt: skip
        bound = conditional_bound(model, x0, noised, num_t=256, seed=0, design="strata")
    est, se = draws.mean(0), draws.std(0) / math.sqrt(steps)
    tol = 4 * torch.sqrt(se**2 + bound.mc_stderr**2) + 1e-2  # + the prior term at t = 1 (< 1e-2 nats)
    assert ((est - bound.nats).abs() < tol).all(), (est, bound.nats, tol)


# --- training on pairs, and random lengths ---------------------------------------------------------------


def _run(tmp_path, name, data, **kw):
    return tiny_run(tmp_path / name, data=str(data), pairs=True, dropout=0.0, val_fraction=0.25, **kw)


@pytest.mark.parametrize("objective", ["masked", "diffusion", "autoregressive"])
def test_training_on_pairs_resumes_exactly(tmp_path, objective):
    data = _pairs_file(tmp_path)
    kw = dict(objective=objective, steps=4, save_every=2, eval_every=2)
    full = train(_run(tmp_path, "full", data, **kw))
    train(_run(tmp_path, "split", data, **kw), until_step=2)
    resumed = train(_run(tmp_path, "split", data, **kw), resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert any("eval_nats_per_token" in r for r in log) and all(math.isfinite(r.get("loss", 0)) for r in log)
    assert ckpt.read_config(full)["train"]["pairs"] is True


def test_random_lengths_cut_a_fraction_of_steps():
    lengths = [keyed_length(0, s, 0.1, 64) for s in range(2000)]
    cut = [n for n in lengths if n < 64]
    assert 0.07 < len(cut) / 2000 < 0.13 and min(lengths) >= 1
    assert lengths == [keyed_length(0, s, 0.1, 64) for s in range(2000)]
    assert all(keyed_length(0, s, 0.0, 64) == 64 for s in range(100))
    with pytest.raises(InvalidArgument, match="random_length_fraction is a pretraining rule"):
        TrainConfig(pairs=True, random_length_fraction=0.01).validate()
    with pytest.raises(InvalidArgument, match="random_length_fraction must be in"):
        TrainConfig(random_length_fraction=1.5).validate()


def test_training_with_random_lengths_runs(tmp_path):
    path = train(tiny_run(tmp_path / "r", random_length_fraction=0.5, steps=4, objective="masked"))
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert path.is_dir() and all(math.isfinite(r["loss"]) for r in log if "loss" in r)


@pytest.mark.parametrize("objective", ["masked", "autoregressive"])
def test_ddm_eval_scores_the_held_out_responses_given_the_prompts(tmp_path, capsys, objective):
    # imported here: only this test drives the CLI
    from ddm.cli import main

    data = _pairs_file(tmp_path)
    run = train(_run(tmp_path, "run", data, objective=objective, steps=2))
    assert main(["eval", "--checkpoint", str(run), "--json", "--num-t", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    corpus = load_pairs(data, seq_len=L, val_fraction=0.25)
    assert out["responses"] == 10 and out["tokens"] == int(corpus.val_masks(L)[0].sum())
    assert 0 < out["nats_per_token"] < 10 and "held-out responses" in out["data"]
