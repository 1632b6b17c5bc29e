"""Quality harness: unigram entropy exactly, generative perplexity, `ddm eval` on AR, `ddm report`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _tiny import tiny_run
from ddm.cli import main
from ddm.eval import Bound, heldout_blocks
from ddm.eval.metrics import NLL, exact_nll, gen_perplexity, real_word_fraction, unigram_entropy, words
from ddm.eval.report import DEFAULT_PREDICTORS, report
from ddm.graphs import Absorbing
from ddm.io import checkpoint
from ddm.model import ARModel, ModelConfig
from ddm.sampling import sample
from ddm.schedules import LogLinear
from ddm.training import train
from exact_scores import ExactScore, correlated_law

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_unigram_entropy_of_known_samples_is_exact():
    x = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2], [0, 1, 2, 3]])
    # per sample: ln 2, 0, ln 4 -> mean ln(2) * (1 + 0 + 2) / 3 = ln 2
    assert unigram_entropy(x) == pytest.approx(math.log(2), abs=1e-15)
    # pooled over 12 tokens: counts 0:3, 1:3, 2:5, 3:1
    p = torch.tensor([3, 3, 5, 1], dtype=torch.float64) / 12
    assert unigram_entropy(x, pooled=True) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-15)
    assert unigram_entropy(torch.tensor([[7, 7, 7]])) == 0.0
    # large ids do not matter, only their frequencies
    assert unigram_entropy(torch.tensor([[0, 50000]])) == pytest.approx(math.log(2), abs=1e-15)


def test_unigram_entropy_errors():
    with pytest.raises(TypeError, match="samples"):
        unigram_entropy([[0, 1]])
    with pytest.raises(TypeError, match="integer"):
        unigram_entropy(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        unigram_entropy(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="negative"):
        unigram_entropy(torch.tensor([[0, -1]]))


def test_gen_perplexity_is_exp_of_mean_token_nll_and_checks_the_vocabulary():
    torch.manual_seed(0)
    judge = ARModel(ModelConfig(hidden=16, heads=2, blocks=1, cond_dim=8, seq_len=6, dropout=0.0), 5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in judge.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randint(0, 5, (7, 6), generator=g)
    r = exact_nll(judge, x)
    assert gen_perplexity(x, judge, batch_size=2) == pytest.approx(r.perplexity, rel=1e-6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen_perplexity(torch.full((2, 6), 5), judge)  # e.g. an absorbing MASK id left in a sample
    with pytest.raises(TypeError, match="autoregressive"):
        gen_perplexity(x, lambda x, s: x)


def test_nll_shares_the_bound_json_keys():
    shared = {"nats_per_token", "bits_per_token", "perplexity", "stderr", "stderr_bits", "tokens"}
    assert shared <= set(NLL.__dataclass_fields__) and shared <= set(Bound.__dataclass_fields__)
    d = NLL(1.0, 1 / math.log(2), math.e, 0.1, 0.1 / math.log(2), 8, 2, 4, "char").to_dict()
    assert d["bits_per_char"] == d["bits_per_token"] and d["exact"] is True


def _run(tmp, name, **kw):
    cfg = tiny_run(tmp / name, log_every=2, eval_every=2)
    cfg.update(kw)
    return train(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    return {
        "absorbing": _run(tmp, "absorbing"),
        "uniform": _run(tmp, "uniform", graph="uniform", schedule="geometric"),
        "ar": _run(tmp, "ar", objective="autoregressive", seq_len=32),  # a judge may be longer
        "tmp": tmp,
    }


def test_ddm_eval_prints_the_exact_nll_of_an_ar_checkpoint(runs, capsys):
    assert main(["eval", "--checkpoint", str(runs["ar"]), "--json", "--max-sequences", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = checkpoint.load(runs["ar"])
    expected = exact_nll(model, heldout_blocks(runs["ar"], 32)[:3])
    assert out["nats_per_token"] == pytest.approx(expected.nats_per_token, rel=1e-12)
    assert out["tokens"] == 3 * 32 and out["exact"] is True
    for key in ("bits_per_token", "perplexity", "stderr"):
        assert out[key] == pytest.approx(getattr(expected, key), rel=1e-12)


def test_report_end_to_end(runs, capsys):
    out = runs["tmp"] / "report"
    argv = ["report", "--judge", str(runs["ar"]), "--steps", "4,2", "--num-samples", "3", "--num-t", "2"]
    argv += ["--max-sequences", "3", "--out", str(out), "--device", "cpu", "--batch-size", "16"]
    argv += ["--checkpoint", str(runs["absorbing"]), "--checkpoint", str(runs["uniform"])]
    assert main(argv) == 0
    assert "report.md" in capsys.readouterr().out
    for name in ("bound.png", "gen_perplexity.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    r = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert r["settings"]["steps"] == [2, 4]
    assert [m["graph"]["type"] for m in r["models"]] == ["absorbing", "uniform"]
    judge = checkpoint.load(runs["ar"])
    for m in r["models"]:
        assert m["bound_over_ar"] == pytest.approx(
            m["bound"]["nats_per_token"] / m["ar_nll"]["nats_per_token"]
        )
        # the AR NLL is that of the judge on the same held-out blocks as the bound
        blocks = heldout_blocks(m["checkpoint"], 16)[:3]
        assert m["ar_nll"]["nats_per_token"] == pytest.approx(exact_nll(judge, blocks).nats_per_token)
        assert m["bound"]["sequences"] == 3 and m["train"]["steps"] == 4
        assert [c["step"] for c in m["curve"]] == [2, 4]
        rows = [(s["predictor"], s["steps"]) for s in m["samples"]]
        # the default rows: analytic and first hitting (which a uniform model, without MASK, skips)
        want = [("analytic", 2), ("analytic", 4)]
        want += [("first_hitting", 2), ("first_hitting", 4)] if m["graph"]["type"] == "absorbing" else []
        assert rows == want
        for s in m["samples"]:
            assert s["gen_perplexity"] >= 1.0 and 0.0 <= s["entropy"] <= math.log(16)
        assert f"{m['bound_over_ar']:.3f}" in md
    assert (
        md.count("| analytic |") == 4
        and md.count("| first_hitting |") == 2
        and md.count("held-out data") == 2
    )


def test_report_default_predictors_differ():
    """Analytic and Euler are bit-identical for the absorbing graph with the log-linear schedule
    (`expm1(d) = h`), so two default rows of them would measure the same samples twice."""
    graph = Absorbing(3)
    model = ExactScore(graph, correlated_law(3, 3))
    kw = dict(graph=graph, schedule=LogLinear(), batch_size=20, seq_len=3, seed=4, backend="torch")
    assert torch.equal(
        sample(model, 6, predictor="analytic", **kw), sample(model, 6, predictor="euler", **kw)
    )
    assert len(set(DEFAULT_PREDICTORS)) == len(DEFAULT_PREDICTORS) >= 2
    assert not {"analytic", "euler"} <= set(DEFAULT_PREDICTORS)


def test_report_covers_the_unmasking_samplers(runs, tmp_path):
    r = report(
        [runs["absorbing"], runs["uniform"]], runs["ar"], steps=[2, 4], num_samples=2, out=tmp_path,
        predictors=("first_hitting", "confidence"), num_t=2, max_sequences=2, plot=False,
    )  # fmt: skip
    absorbing, uniform = r["models"]
    rows = [(s["predictor"], s["steps"]) for s in absorbing["samples"]]
    assert rows == [("first_hitting", 2), ("first_hitting", 4), ("confidence", 2), ("confidence", 4)]
    for s in absorbing["samples"]:
        assert 1 <= s["network_calls"] <= s["steps"] and s["gen_perplexity"] >= 1.0
    assert uniform["samples"] == []  # no MASK to unmask


def test_report_takes_sampler_options_per_predictor(runs, tmp_path):
    """`name:key=value:...` rows: the options reach ddm.sample, and a row that does not use the step count
    (an entropy bound, first hitting ungrouped) runs once; the table and the plot are by network calls."""
    specs = ("first_hitting:group_by_step=false", "confidence:entropy_bound=0.5", "analytic:temperature=0.9")
    r = report([runs["absorbing"]], runs["ar"], steps=[2, 4], num_samples=2, out=tmp_path,
               predictors=specs, num_t=2, max_sequences=2)  # fmt: skip
    rows = [(s["predictor"], s["steps"]) for s in r["models"][0]["samples"]]
    assert rows == [(specs[0], 4), (specs[1], 4), (specs[2], 2), (specs[2], 4)]
    calls = {(s["predictor"], s["steps"]): s["network_calls"] for s in r["models"][0]["samples"]}
    assert calls[(specs[0], 4)] == 16  # ungrouped: one call per position (L = 16), whatever the steps
    model = checkpoint.load(runs["absorbing"])
    want = sample(model, 4, predictor="confidence", entropy_bound=0.5, batch_size=2, seed=0)
    got = r["models"][0]["samples"][1]
    assert got["example"] == model.tokenizer.decode(want[0].tolist())[:200]
    md = (tmp_path / "report.md").read_text()
    assert (
        "| network calls | calls per sequence |" in md
        and f"| {specs[1]} | 4 | {calls[(specs[1], 4)]} |" in md
    )
    for row in r["models"][0]["samples"]:  # a call evaluates at most every sample
        assert 0 < row["calls_per_sequence"] <= row["network_calls"]
    assert r["models"][0]["samples"][0]["calls_per_sequence"] == 16  # ungrouped: every row, every call
    assert (tmp_path / "gen_perplexity.png").read_bytes()[:8] == PNG_MAGIC
    bad_specs = [
        ("confidence:bogus=1", "unknown option 'bogus'"),
        ("confidence:threshold", "key=value"),
        ("analytic:top_k=0", "top_k must be >= 1"),
    ]
    for bad, match in bad_specs:
        with pytest.raises(ValueError, match=match):
            report([runs["absorbing"]], runs["ar"], steps=[2], predictors=(bad,), out=tmp_path, plot=False)


def test_report_rejects_a_diffusion_judge_and_bad_steps(runs, tmp_path):
    with pytest.raises(ValueError, match="not an autoregressive"):
        report([runs["absorbing"]], runs["uniform"], steps=[2], out=tmp_path)
    with pytest.raises(ValueError, match="not a diffusion checkpoint"):
        report([runs["ar"]], runs["ar"], steps=[2], out=tmp_path)
    with pytest.raises(ValueError, match="steps"):
        report([runs["absorbing"]], runs["ar"], steps="8,x", out=tmp_path)
    with pytest.raises(ValueError, match="predictors"):
        report([runs["absorbing"]], runs["ar"], steps=[2], predictors=("ancestral",), out=tmp_path)


def test_words_are_case_folded_letter_runs_with_inner_apostrophes():
    assert words("O'er the HILL, 'tis 2nd_time-o") == ["o'er", "the", "hill", "tis", "nd", "time", "o"]
    assert words("  \n ;; 42 ") == []


def test_real_word_fraction_counts_known_words_and_drops_cut_edges():
    vocab = "To be, or not to be: that is the question."
    # edges dropped: "ot" (cut at the start) and "quest" (cut at the end) do not count
    assert real_word_fraction(["ot to be or xq the quest"], vocab) == pytest.approx(4 / 5)
    assert real_word_fraction(["ot to be or xq the quest"], vocab, drop_edges=False) == pytest.approx(4 / 7)
    # pooled over samples, not averaged per sample; a word ending in the last character is an edge word
    assert real_word_fraction([" be zz ", " qq qq qq qq "], vocab) == pytest.approx(1 / 6)
    assert real_word_fraction([" a b c x"], ["A", "b"]) == pytest.approx(2 / 3)  # a word list, case-folded
    assert real_word_fraction([" To be "], vocab) == 1.0


def test_real_word_fraction_rejects_what_it_cannot_count():
    with pytest.raises(ValueError, match="no word to count"):
        real_word_fraction(["word", " 12 "], "word")
    with pytest.raises(ValueError, match="vocabulary"):
        real_word_fraction([" a b "], "123")
    with pytest.raises(ValueError, match="no samples"):
        real_word_fraction([], "a")
    with pytest.raises(TypeError, match="single str"):
        real_word_fraction(" a b ", "a")
