"""The unmasking samplers (first hitting, confidence) through the scheduler-style `Sampler` (issue 14).

`Sampler(predictor="first_hitting" | "confidence")` runs the same loop as every other predictor:

    k = 0
    while not sampler.finished(x, k):
        x = sampler.step(model(x, sampler.noise_level(k, B, x=x, seed=s)), k, x, seed=s).prev_sample
        k += 1

Both run the one `Predictor`; that the loop gives `ddm.sample`'s tokens for every predictor is part of
the predictor contract (tests/test_predictor_contract.py). Here: conditioning, exactness of the loop
itself, and the errors.
"""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, sample
from ddm.schedules import Geometric, LogLinear
from exact_scores import (  # noqa: F401
    BACKENDS,
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    needs_rust,
    one_torch_thread,
    tv,
)
from test_exactness import _null_tv_quantile

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 5
P0 = correlated_law(N, L)
GRAPH = Absorbing(N)


def _loop(sampler: Sampler, model, batch: int, seed: int, backend: str, prefix=None):
    x = sampler.init_noise(batch, L, seed=seed)
    if prefix is not None:
        x[:, : len(prefix)] = torch.tensor(prefix)
    k = 0
    while not sampler.finished(x, k):
        sigma = sampler.noise_level(k, batch, x=x, seed=seed)
        x = sampler.step(model(x, sigma), k, x, seed=seed, backend=backend).prev_sample
        k += 1
    return x, k


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampler_loop_with_a_prefix_is_sample(backend: str) -> None:
    model = ExactScore(GRAPH, P0)
    for options in (dict(predictor="first_hitting"), dict(predictor="confidence", tokens_per_step=2)):
        want = sample(model, 3, graph=GRAPH, schedule=Geometric(), batch_size=64, seq_len=L, seed=4,
                      backend=backend, prefix=[2, 0], **options)  # fmt: skip
        sampler = Sampler(GRAPH, Geometric(), **options)
        sampler.set_timesteps(3)
        got, _ = _loop(sampler, model, 64, 4, backend, prefix=[2, 0])
        assert torch.equal(got, want), options


def test_sampler_first_hitting_is_exact() -> None:
    """The loop itself at the noise floor of p0 (not only equal to sample()): L calls, exact law."""
    model = ExactScore(Absorbing(N), correlated_law(N, 3))
    p = model.p0.reshape(-1)
    sampler = Sampler(Absorbing(N), LogLinear(), predictor="first_hitting")
    sampler.set_timesteps(1)
    x = sampler.init_noise(4000, 3)
    k = 0
    while not sampler.finished(x, k):
        x = sampler.step(model(x, sampler.noise_level(k, 4000, x=x, seed=9)), k, x, seed=9).prev_sample
        k += 1
    assert k == 3
    got = empirical(x, N)
    assert tv(got, p) < _null_tv_quantile(p, 4000)
    assert chi2_pvalue(got, p, 4000) > 1e-3


def test_config_round_trip() -> None:
    s = Sampler(GRAPH, LogLinear(), predictor="confidence", threshold=0.8, order="margin", top_k=3)
    t = Sampler.from_config(s.config)
    assert t.config == s.config and "threshold=0.8" in repr(t)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(graph=Uniform(N), schedule=Geometric(), predictor="first_hitting"), "has no MASK"),
        (dict(graph=Uniform(N), schedule=Geometric(), predictor="confidence"), "has no MASK"),
        (dict(predictor="analytic", tokens_per_step=2), "tokens_per_step is an option"),
        (dict(predictor="euler", group_by_step=True), "group_by_step is an option"),
        (dict(predictor="first_hitting", threshold=0.5), "threshold is an option"),
        (dict(predictor="confidence", tokens_per_step=0), "tokens_per_step must be >= 1"),
        (dict(predictor="confidence", threshold=1.5), r"threshold must lie in \(0, 1\]"),
        (dict(predictor="first_hitting", remask=0.5), "remask is an option of the grid predictors"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    kw = {"graph": GRAPH, "schedule": LogLinear(), **kwargs}
    with pytest.raises(ValueError, match=match):
        Sampler(**kw)


def test_unmasking_noise_level_needs_the_tokens() -> None:
    s = Sampler(GRAPH, LogLinear(), predictor="first_hitting")
    s.set_timesteps(2)
    with pytest.raises(ValueError, match=r"x=x, seed=seed\) needs the current tokens"):
        s.noise_level(0, 4)


@pytest.mark.parametrize("predictor", ["first_hitting", "confidence"])
def test_progress_bar_counts_the_calls(predictor: str, capsys) -> None:
    model = ExactScore(GRAPH, P0)
    kw = dict(graph=GRAPH, schedule=LogLinear(), batch_size=8, seq_len=L, seed=1, predictor=predictor)
    quiet = sample(model, 2, **kw)
    assert capsys.readouterr().err == ""
    shown = sample(model, 2, progress=True, **kw)
    err = capsys.readouterr().err
    assert torch.equal(shown, quiet)  # the bar changes nothing
    assert predictor in err and "call" in err, err
    if predictor == "first_hitting":
        assert f"/{L} " in err, err  # its total is known: one call per free position
