"""The `ddm` model of lm-evaluation-harness (`ddm.eval.harness`), offline: local task YAMLs over local
JSONL files, figures checked against `ddm eval` / `likelihood_bound` / `conditional_bound`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import ddm  # noqa: E402
from _tiny import tiny_run  # noqa: E402
from ddm import cli  # noqa: E402
from ddm.assets import bundled_text  # noqa: E402
from ddm.errors import InvalidArgument  # noqa: E402
from ddm.eval import conditional_bound, likelihood_bound  # noqa: E402
from ddm.eval.harness import DDMLM, NOTE, windows  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

SEQ = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm-eval") / "run"
    return ddm.train(tiny_run(run, steps=4, dropout=0.0))


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _text(n: int, start: int = 5000) -> str:
    return bundled_text()[start : start + n]


def test_windows_cover_the_scored_tokens_once():
    assert windows(40, 0, 16) == [(0, 0, 16), (16, 16, 32), (24, 32, 40)]
    assert windows(10, 4, 16) == [(0, 4, 10)]
    assert windows(30, 20, 16) == [(14, 20, 30)]
    for n, start in ((1, 0), (17, 3), (64, 64), (100, 7)):
        ws = windows(n, start, 16)
        assert [i for _, lo, hi in ws for i in range(lo, hi)] == list(range(start, n))
        assert all(hi - b <= 16 and b <= lo for b, lo, hi in ws)


def test_loglikelihood_is_the_conditional_bound(ckpt):
    lm = DDMLM(pretrained=str(ckpt), num_t=6, seed=2, eval_batch_size=5)
    context, continuation = "or not to", " be, or"  # 16 characters at most: one window
    ((ll, greedy),) = lm.loglikelihood([_req("loglikelihood", context + " ", "be, or")])
    tok = lm.tokenizer
    ids = tok.encode(context + continuation)
    x = torch.tensor([ids])
    scored = torch.arange(len(ids)) >= len(tok.encode(context))
    b = conditional_bound(lm.model, x, scored, num_t=6, batch_size=5, seed=2)
    assert ll == -float(b.nats[0]) and isinstance(greedy, bool)
    rec = lm.records["loglikelihood"][-1]
    assert rec["tokens"] == len(continuation) and rec["mc_stderr"] == float(b.mc_stderr[0]) > 0
    # a context too long for one window is cut on the left: the window is the last SEQ tokens
    long_ctx = _text(50)
    ((ll2, _),) = lm.loglikelihood([_req("loglikelihood", long_ctx, "abc")])
    ids = tok.encode(long_ctx + "abc")[-SEQ:]
    b2 = conditional_bound(
        lm.model, torch.tensor([ids]), torch.arange(SEQ) >= SEQ - 3, num_t=6, batch_size=5, seed=2
    )
    assert ll2 == -float(b2.nats[0])


def test_rolling_is_likelihood_bound_on_full_windows(ckpt):
    lm = DDMLM(pretrained=str(ckpt), num_t=4, seed=0, eval_batch_size=7)
    text = _text(5 * SEQ)
    (ll,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    b = likelihood_bound(lm.model, text, num_t=4, seed=0, batch_size=7)
    assert math.isclose(-ll, b.nats_per_token * 5 * SEQ, rel_tol=1e-12)
    # an empty context scores the same text as the rolling window does
    ((ll1, _),) = lm.loglikelihood([_req("loglikelihood", "", text[:SEQ])])
    (ll2,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text[:SEQ])])
    assert ll1 == ll2
    # a partial last window is scored given the tokens before it
    (ll3,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text[: 2 * SEQ + 5])])
    assert lm.records["loglikelihood_rolling"][-1]["tokens"] == 2 * SEQ + 5 and ll3 < 0


def test_generate_until_continues_the_context_and_stops(ckpt):
    lm = DDMLM(pretrained=str(ckpt), steps=8, seed=1)
    outs = lm.generate_until(
        [
            _req("generate_until", "HAMLET. ", {"until": ["e", "\n"], "max_gen_toks": 10}),
            _req("generate_until", _text(40), {"until": [], "max_gen_toks": 6}),
        ]
    )
    assert "e" not in outs[0] and "\n" not in outs[0] and len(outs[0]) <= 10
    assert len(outs[1]) == 6 and all(
        c in lm.tokenizer.decode(range(lm.tokenizer.vocab_size)) for c in outs[1]
    )


def test_remote_code_and_unknown_arguments_are_refused(ckpt):
    with pytest.raises(ValueError, match="trust_remote_code"):
        DDMLM(pretrained=str(ckpt), trust_remote_code=True)
    with pytest.raises(ValueError, match="unknown ddm model_args"):
        DDMLM(pretrained=str(ckpt), temperature=0.5)


def _task_dir(tmp: Path, text: str) -> Path:
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tmp / "docs.jsonl").write_text(json.dumps({"text": text}) + "\n")
    choices = [
        {"context": "To be, or not to", "choices": [" be", " xq"], "label": 0},
        {"context": "HAMLET. Ay, ", "choices": ["madam", "zzzzz"], "label": 0},
    ]
    (tmp / "choices.jsonl").write_text("".join(json.dumps(c) + "\n" for c in choices))
    (tasks / "ddm_local_rolling.yaml").write_text(
        f"""task: ddm_local_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp / "docs.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
    )
    (tasks / "ddm_local_choice.yaml").write_text(
        f"""task: ddm_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp / "choices.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""
    )
    (tasks / "ddm_local_generate.yaml").write_text(
        f"""task: ddm_local_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp / "choices.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
"""
    )
    return tasks


def test_lm_eval_cli_runs_a_local_task_and_matches_ddm_eval(ckpt, tmp_path, capsys):
    text = _text(6 * SEQ)  # whole windows: the same blocks as `ddm eval --data`
    tasks = _task_dir(tmp_path, text)
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = [
        sys.executable,
        "-m",
        "ddm.eval.harness",
        "--model",
        "ddm",
        "--model_args",
        f"pretrained={ckpt},num_t=8,seed=0,eval_batch_size=64,steps=8",
        "--tasks",
        "ddm_local_rolling,ddm_local_choice,ddm_local_generate",
        "--include_path",
        str(tasks),
        "--output_path",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert NOTE in proc.stderr and "(+- Monte-Carlo s.e.)" in proc.stderr
    (out,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(out.read_text())
    lm_bpb = results["results"]["ddm_local_rolling"]["bits_per_byte,none"]
    assert 0.0 <= results["results"]["ddm_local_choice"]["acc,none"] <= 1.0
    assert 0.0 <= results["results"]["ddm_local_generate"]["exact_match,none"] <= 1.0
    info = results["config"]["ddm"]
    assert info["note"] == NOTE and info["loglikelihood_rolling"]["mc_stderr_bits_per_byte"] > 0
    assert info["loglikelihood"]["tasks"]["ddm_local_choice"]["requests"] == 4  # 2 documents x 2 choices
    assert "  ddm_local_rolling: 1 requests, NLL bound " in proc.stderr

    (tmp_path / "text.txt").write_text(text)
    capsys.readouterr()
    cli.main(
        ["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "text.txt"), "--json", "--num-t", "8"]
    )
    ddm_eval = json.loads(capsys.readouterr().out)
    assert text.isascii() and ddm_eval["unit"] == "char"  # bytes = chars = tokens
    assert math.isclose(lm_bpb, ddm_eval["bits_per_token"], rel_tol=1e-9), (lm_bpb, ddm_eval)
    assert math.isclose(
        info["loglikelihood_rolling"]["bits_per_byte"], ddm_eval["bits_per_token"], rel_tol=1e-9
    )


def test_generate_until_with_prompt_guidance(ckpt):
    """Issue 30: `guidance=1` is the plain sampler; another strength changes the continuation's law."""
    reqs = [_req("generate_until", _text(40), {"until": [], "max_gen_toks": 12}) for _ in range(3)]
    plain = DDMLM(pretrained=str(ckpt), steps=8, seed=1).generate_until(reqs)
    assert DDMLM(pretrained=str(ckpt), steps=8, seed=1, guidance="1.0").generate_until(reqs) == plain
    guided = DDMLM(pretrained=str(ckpt), steps=8, seed=1, guidance="4").generate_until(reqs)
    assert all(len(t) <= 12 for t in guided)
    with pytest.raises(InvalidArgument, match=">= 0"):
        DDMLM(pretrained=str(ckpt), steps=8, seed=1, guidance="-1").generate_until(reqs[:1])
