"""A response to a prompt (issue 31): `ddm.sample(model, steps, prompt=..., max_new_tokens=...,
stop_at_eos=True)` is the prefix-conditioned sample's new tokens, cut at the first EOS."""

from __future__ import annotations

import math

import pytest
import torch
from ddm import sample
from ddm.errors import InvalidArgument
from ddm.graphs import Absorbing
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling.response import cut_at_eos
from ddm.schedules import LogLinear
from ddm.tokenizers import CharTokenizer

EOS = "\x03"
TOK = CharTokenizer("abc=" + EOS, eos=EOS)  # ids: EOS 0, '=' 1, a 2, b 3, c 4
N, L = 5, 16


def _model(block_size: int = 0) -> ScoreModel:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=L, dropout=0.0, subs=True,
                      time_conditioning=False, block_size=block_size)  # fmt: skip
    model = ScoreModel(cfg, Absorbing(N), LogLinear(), tokenizer=TOK).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


class _Scripted:
    """An exact absorbing model whose clean law is one sequence: the prompt's tokens, then 'abc', EOS,
    then 'b' (what a model writes after its end, which the cut removes)."""

    graph, schedule, seq_len, tokenizer = Absorbing(N), LogLinear(), L, TOK

    def __init__(self, prompt_len: int) -> None:
        target = [1] * prompt_len + [2, 3, 4, 0] + [3] * (L - prompt_len - 4)
        self.logp = torch.full((L, N), -30.0)
        self.logp[torch.arange(L), torch.tensor(target)] = 0.0

    def __call__(self, x, sigma):
        n = x.shape[1]
        sigma = sigma.to(torch.float64)[:, None, None]
        scores = self.logp[:n].to(torch.float64)[None] - torch.log(torch.expm1(sigma))  # p0(y) / expm1(sigma)
        return torch.cat([scores, torch.zeros(x.shape[0], n, 1, dtype=torch.float64)], -1)


@pytest.mark.parametrize("predictor", ["analytic", "confidence", "first_hitting"])
def test_the_response_is_the_prefix_conditioned_sample(predictor):
    model = _model()
    prompt = TOK.encode("ab=")
    got = sample(model, 8, prompt=prompt, max_new_tokens=7, seed=3, batch_size=2, predictor=predictor)
    full = sample(model, 8, prefix=prompt, seq_len=10, seed=3, batch_size=2, predictor=predictor)
    assert got.shape == (2, 7) and torch.equal(got, full[:, 3:])
    text = sample(model, 8, prompt="ab=", max_new_tokens=7, seed=3, batch_size=2, predictor=predictor)
    assert torch.equal(text, got)


def test_a_block_model_answers_too():
    model = _model(block_size=4)
    prompt = TOK.encode("ab=")
    got, stats = sample(model, 4, prompt=prompt, max_new_tokens=9, seed=1, return_stats=True)
    full = sample(model, 4, prefix=prompt, max_len=12, seed=1)
    assert torch.equal(got, full[:, 3:])
    cut, stats = sample(
        model, 4, prompt=prompt, max_new_tokens=9, seed=1, stop_at_eos=True, return_stats=True
    )
    assert stats.lengths is not None and cut.shape[1] <= 9


def test_stop_at_eos_cuts_each_row_at_its_first_eos():
    model = _Scripted(prompt_len=3)
    raw = sample(model, 8, prompt="==" + "=", max_new_tokens=9, seed=0, predictor="confidence", batch_size=2)
    assert TOK.decode(raw[0].tolist()) == "abc" + EOS + "bbbbb"  # the model's garbage after its end
    kw = dict(max_new_tokens=9, seed=0, predictor="confidence", batch_size=2)
    out, stats = sample(model, 8, prompt="===", stop_at_eos=True, return_stats=True, **kw)
    assert [TOK.decode(r) for r in out.tolist()] == ["abc" + EOS * 6] * 2
    assert stats.lengths.tolist() == [4, 4]
    x = torch.tensor([[2, 0, 3, 0], [2, 3, 4, 4], [0, 2, 2, 2]])
    cut, lengths = cut_at_eos(x, 0)
    assert cut.tolist() == [[2, 0, 0, 0], [2, 3, 4, 4], [0, 0, 0, 0]] and lengths.tolist() == [2, 4, 1]


def test_bad_responses_are_refused():
    model = _model()
    with pytest.raises(InvalidArgument, match="= 17 is longer than the model's seq_len = 16"):
        sample(model, 4, prompt="ab=", max_new_tokens=14)
    with pytest.raises(InvalidArgument, match="give the prompt too"):
        sample(model, 4, max_new_tokens=3)
    with pytest.raises(InvalidArgument, match="takes the place of prefix"):
        sample(model, 4, prompt="a", prefix=[1])
    with pytest.raises(InvalidArgument, match="max_new_tokens must be a positive int"):
        sample(model, 4, prompt="a", max_new_tokens=0)
    model.tokenizer = None
    with pytest.raises(InvalidArgument, match="the model has no tokenizer"):
        sample(model, 4, prompt="a", max_new_tokens=3)
    with pytest.raises(InvalidArgument, match="needs eos_id"):
        sample(model, 4, prompt=[1, 2], max_new_tokens=3, stop_at_eos=True)
    assert math.isfinite(float(sample(model, 4, prompt=[1, 2], seed=0).float().mean()))  # default: to seq_len


def test_ddm_sample_answers_a_prompt_from_the_command_line(tmp_path, capsys):
    # imported here: the CLI and the trainer are only needed by this test
    import json

    from _tiny import tiny_run
    from ddm.cli import main
    from ddm.training import train

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "ab=", "response": "ba"}) + "\n" for _ in range(8)))
    run = train(tiny_run(tmp_path / "run", data=str(data), pairs=True, objective="masked", steps=1))
    args = ["sample", "--checkpoint", str(run), "--prompt", "ab=", "--max-new-tokens", "6", "--num", "2"]
    assert main([*args, "--predictor", "confidence", "--stop-at-eos", "--no-progress"]) == 0
    captured = capsys.readouterr()
    texts = captured.out.strip().split("\n" + "=" * 80 + "\n")
    assert len(texts) == 2 and all(len(t) <= 6 and "ab=" not in t for t in texts)
    assert "lengths" in captured.err


def test_several_prompts_are_answered_one_per_row():
    model = _model()
    prompts = ["ab=", "ca=", "bb="]
    kw = dict(max_new_tokens=6, seed=4, predictor="confidence", order="margin")
    got = sample(model, 8, prompt=prompts, **kw)
    assert got.shape == (3, 6)
    for k, text in enumerate(prompts):  # row k of the batch: the seed's row k, with its own prompt
        alone = sample(model, 8, prompt=text, batch_size=k + 1, **kw)
        assert torch.equal(got[k], alone[k])
    with pytest.raises(InvalidArgument, match="one token length"):
        sample(model, 8, prompt=["ab=", "a="], max_new_tokens=3)
    with pytest.raises(InvalidArgument, match="3 prompts for batch_size=2"):
        sample(model, 8, prompt=prompts, max_new_tokens=3, batch_size=2)
    with pytest.raises(InvalidArgument, match="one prompt at a time"):
        sample(_model(block_size=4), 4, prompt=prompts, max_new_tokens=5)
