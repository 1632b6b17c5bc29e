"""Temperature, top-k and top-p on the proposal distribution (`ddm.sampling.proposal`, docs/math.md 5.10)."""

from __future__ import annotations

import argparse
import itertools

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, predictors, sample
from ddm.sampling.cli_options import add_sampler_options
from ddm.sampling.proposal import Proposal, apply_to_step, make_proposal, transform_weights
from ddm.sampling.sampler import native_available
from ddm.schedules import Geometric, LogLinear
from exact_scores import BACKENDS, ExactScore, chi2_pvalue, correlated_law, needs_rust, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRAPHS = {"absorbing": (Absorbing(3), LogLinear()), "uniform": (Uniform(3), Geometric())}


def _brute(w: torch.Tensor, k: int | None, p: float | None) -> torch.Tensor:
    """Top-k then top-p by sorting every row in Python (the reference)."""
    out = torch.zeros_like(w, dtype=torch.float64)
    for r in range(w.shape[0]):
        row = w[r].tolist()
        order = sorted((y for y in range(len(row)) if row[y] > 0), key=lambda y: (-row[y], y))
        if k is not None:
            order = order[:k]
        if p is not None:
            total, acc, keep = sum(row[y] for y in order), 0.0, []
            for y in order:
                if acc >= p * total:
                    break
                keep.append(y)
                acc += row[y]
            order = keep
        tot = sum(row[y] for y in order)
        for y in order:
            out[r, y] = row[y] / tot
    return out


@pytest.mark.parametrize("dim", [1, 2, 5, 17, 70])
def test_top_k_top_p_kept_set_and_renormalised_law_match_a_sort(dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    w = torch.rand(40, dim, generator=g, dtype=torch.float64) ** 3
    w[w < 0.01] = 0.0  # some zero weights
    w[0] = 1.0  # all tied: the lower ids win
    w[1, : dim // 2] = 0.5
    for k, p in itertools.product([None, 1, 3, 10], [None, 0.05, 0.5, 0.9, 0.999]):
        got = transform_weights(w, Proposal(1.0, k, p))
        want = _brute(w, k, p)
        nonempty = w.sum(-1) > 0
        torch.testing.assert_close(got[nonempty], want[nonempty], rtol=1e-12, atol=1e-15)
        assert bool(((got > 0) == (want > 0))[nonempty].all()), (k, p)  # the kept set, exactly


def test_temperature_is_a_power_of_the_weights() -> None:
    w = torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    for t in (0.3, 1.0, 2.5):
        want = w ** (1 / t)
        torch.testing.assert_close(transform_weights(w, Proposal(t)), want / want.sum(), rtol=1e-13, atol=0)
    # tiny temperatures do not underflow to NaN: the argmax keeps all the mass
    torch.testing.assert_close(transform_weights(w, Proposal(1e-4)), torch.tensor([[1.0, 0, 0, 0]]).double())


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_stay_probability_is_kept(kind: str) -> None:
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, correlated_law(3, 3))
    x = torch.tensor([[graph.dim - 1, 0, graph.dim - 1], [1, graph.dim - 1, 2]])
    for predictor in ("analytic", "euler"):
        plain = Sampler(graph, schedule, predictor=predictor)
        hot = Sampler(graph, schedule, predictor=predictor, temperature=0.5, top_k=2, top_p=0.9)
        for s in (plain, hot):
            s.set_timesteps(4)
        for k in range(5):
            ls = model(x, plain.noise_level(k, 2))
            a, b = plain.step_probs(ls, k, x), hot.step_probs(ls, k, x)
            torch.testing.assert_close(b.sum(-1), torch.ones(2, 3, dtype=torch.float64))
            torch.testing.assert_close(a.gather(-1, x[..., None]), b.gather(-1, x[..., None]), rtol=0, atol=0)
            assert bool(((b > 0).sum(-1) <= 3).all())  # top_k = 2 moves plus the stay


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", ["analytic", "euler"])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_neutral_values_are_the_plain_sampler_bit_for_bit(kind: str, predictor: str, backend: str) -> None:
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, correlated_law(3, 3))
    args = dict(graph=graph, schedule=schedule, batch_size=64, seq_len=3, predictor=predictor, seed=9,
                backend=backend)  # fmt: skip
    base = sample(model, 6, **args)
    for opts in (dict(temperature=1.0, top_k=None, top_p=None), dict(temperature=1, top_p=1.0, top_k=3)):
        assert torch.equal(sample(model, 6, **args, **opts), base), opts
    assert not torch.equal(sample(model, 6, **args, temperature=0.5), base)


def _row_law(kind: str, step: str, seed: int = 0):
    """One position's transformed step law (torch) and a function drawing it many times on a backend."""
    n = 40
    graph = Absorbing(n) if kind == "absorbing" else Uniform(n)
    g = torch.Generator().manual_seed(seed)
    row = (torch.rand(graph.dim, generator=g) * 5 - 4).to(torch.float32)
    x0 = graph.dim - 1 if kind == "absorbing" else 7
    return graph, row, x0


@needs_rust
@pytest.mark.parametrize("opts", [dict(temperature=0.6), dict(top_k=4), dict(top_p=0.6, temperature=1.7)])
@pytest.mark.parametrize("step", ["euler", "analytic", "denoise"])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_rust_and_torch_draw_the_same_transformed_law(kind: str, step: str, opts: dict) -> None:
    from ddm.sampling import _native, torch_steps

    graph, row, x0 = _row_law(kind, step)
    b, length = 50, 400
    x = torch.full((b, length), x0, dtype=torch.int64)
    ls = row.expand(b, length, -1).contiguous()
    level = torch.full((b,), 0.3, dtype=torch.float64)
    proposal = make_proposal(**opts)
    fn = {"euler": torch_steps.euler_step_probs, "analytic": torch_steps.analytic_step_probs,
          "denoise": torch_steps.denoise_step_probs}[step]  # fmt: skip
    probs = apply_to_step(fn(graph, x[:1, :1], ls[:1, :1], level[:1]), x[:1, :1], proposal)[0, 0]
    out = _native.proposal_step(step, graph, x, ls, level, 3, 1, proposal)
    counts = torch.bincount(out.reshape(-1), minlength=graph.dim).double()
    n = counts.sum()
    assert chi2_pvalue(counts / n, probs, int(n)) > 1e-4
    assert bool((counts[probs == 0] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_one_is_the_argmax_of_the_denoiser(backend: str) -> None:
    graph, schedule = GRAPHS["absorbing"]
    p0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    model = ExactScore(graph, p0[:, None] * p0[None, :])  # independent positions, L = 2
    x = sample(model, 3, graph=graph, schedule=schedule, batch_size=50, seq_len=2, seed=1, top_k=1,
               backend=backend)  # fmt: skip
    assert bool((x == 0).all())


class _FixedScores:
    """A time-independent absorbing model whose log-scores are the same at every position: `scores`."""

    def __init__(self, scores: list[float]) -> None:
        self.graph, self.schedule, self.seq_len = Absorbing(len(scores)), LogLinear(), 6
        self.scores = torch.tensor([*scores, 0.0], dtype=torch.float32)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(*x.shape, -1).clone()


GREEDY_CASES = [
    dict(predictor="analytic"),
    dict(predictor="euler", top_p=0.5),
    dict(predictor="first_hitting"),
    dict(predictor="first_hitting", group_by_step=True),
    dict(predictor="confidence"),
    dict(predictor="confidence", order="random", tokens_per_step=2),
    dict(predictor="analytic", remask=0.3),
]


@pytest.mark.parametrize("opts", GREEDY_CASES)
def test_temperature_zero_is_greedy_with_ties_to_the_lower_id_on_both_backends(opts: dict) -> None:
    """`temperature=0` draws the most likely token (transformers' greedy decoding); of two equally likely
    tokens, the lower id, the same on both backends."""
    backends = ["torch"] + (["rust"] if native_available() else [])
    for scores, want in (([0.1, 2.0, 0.3, -1.0], 1), ([0.5, 1.5, 0.2, 1.5], 1), ([3.0, 3.0, 1.0, 3.0], 0)):
        model = _FixedScores(scores)
        for backend in backends:
            x = sample(model, 4, batch_size=5, seed=3, temperature=0.0, backend=backend, **opts)
            assert bool((x == want).all()), (scores, backend, x)


def test_temperature_zero_keeps_its_config() -> None:
    s = Sampler(*GRAPHS["uniform"], temperature=0.0)
    assert Sampler.from_config(s.config).config["temperature"] == 0.0
    assert s.proposal.resolved == Proposal(1.0, 1, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    graph, schedule = GRAPHS["absorbing"]
    model = ExactScore(graph, correlated_law(3, 3))
    with pytest.raises(ValueError, match=match):
        sample(model, 2, graph=graph, schedule=schedule, seq_len=3, **kwargs)
    with pytest.raises(ValueError, match=match):
        Sampler(graph, schedule, **kwargs)


def test_config_keeps_the_options() -> None:
    s = Sampler(Uniform(5), Geometric(), temperature=0.7, top_k=3, top_p=0.9)
    t = Sampler.from_config(s.config)
    assert t.proposal == s.proposal == Proposal(0.7, 3, 0.9)


def _checkpoint(tmp_path):
    checkpoint = pytest.importorskip("ddm.io.checkpoint")
    from ddm.model import EMA, ModelConfig, ScoreModel
    from ddm.tokenizers import CharTokenizer

    tok = CharTokenizer("abcd")
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=12, dropout=0.0)
    model = ScoreModel(cfg, Absorbing(tok.vocab_size), LogLinear(), tokenizer=tok)
    config = {
        "model": model.config.to_dict(),
        "graph": model.graph.to_config(),
        "schedule": model.schedule.to_config(),
        "tokenizer": tok.to_config(),
        "train": {},
    }
    opt = torch.optim.AdamW(model.parameters())
    return checkpoint.save(tmp_path, 1, model=model, config=config, ema=EMA(model, 0.9), optimizer=opt)


def test_cli_sample_options(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from ddm.cli import main

    path = _checkpoint(tmp_path)
    args = ["sample", "--checkpoint", str(path), "--steps", "8", "--num", "3", "--seed", "4", "--no-progress"]
    assert main([*args, "--temperature", "0.7", "--top-k", "3", "--top-p", "0.9"]) == 0
    texts = capsys.readouterr().out.strip("\n").split("\n" + "=" * 80 + "\n")
    assert len(texts) == 3 and all(len(t) == 12 and set(t) <= set("abcd") for t in texts)
    for extra in (
        ["--predictor", "first_hitting"],
        ["--predictor", "confidence", "--tokens-per-step", "4"],
        ["--remask", "0.1"],
    ):
        assert main([*args, *extra, "--temperature", "0.9", "--top-p", "0.95"]) == 0
        assert len(capsys.readouterr().out.strip("\n").split("\n" + "=" * 80 + "\n")) == 3
    assert main([*args, "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_cli_summary_counts_calls_not_unused_steps(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """First hitting makes one call per token whatever --steps says: the summary must not read
    '1 steps, 12 network calls'; a grid predictor's summary gives both."""
    from ddm.cli import main

    path = _checkpoint(tmp_path)
    args = ["sample", "--checkpoint", str(path), "--steps", "1", "--num", "2", "--no-progress"]
    assert main([*args, "--predictor", "first_hitting"]) == 0
    err = capsys.readouterr().err
    assert "12 network calls" in err and "steps" not in err
    assert main(args) == 0
    assert "1 steps, 2 network calls" in capsys.readouterr().err


def test_cli_options_come_from_the_dataclasses() -> None:
    """Every option of every registered predictor is a flag with help text, and so are --predictor and
    --backend."""
    p = argparse.ArgumentParser()
    add_sampler_options(p)
    helps = {a.dest: a.help for a in p._actions}
    for name in (*predictors.option_fields(), "predictor", "backend"):
        assert helps.get(name), name
