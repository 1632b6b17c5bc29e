"""The log-score contract, the same on both backends (issue 12, defects 3 and 5).

- A log-score may be any float32 value or -inf: -inf is an exact zero ratio ("never this token"), which a
  model outputs after masking a token out, and that token is then never drawn.
- NaN and +inf are refused with a ValueError naming `log_score`.
- Large finite log-scores (above 709.78, where exp overflows float64) are handled by a shift by the row
  maximum: the torch backend once drew a zero-probability token there.
"""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler
from ddm.sampling.sampler import native_available
from ddm.schedules import Geometric, LogLinear

BACKENDS = [
    "torch",
    pytest.param("rust", marks=pytest.mark.skipif(not native_available(), reason="ddm._core not built")),
]
PREDICTORS = ["euler", "analytic"]


def _sampler(kind: str, predictor: str) -> Sampler:
    graph, schedule = (Absorbing(4), LogLinear()) if kind == "absorbing" else (Uniform(4), Geometric())
    s = Sampler(graph, schedule, predictor=predictor)
    s.set_timesteps(4)
    return s


def _start(s: Sampler, n: int) -> torch.Tensor:
    return torch.full((n, 3), s.graph.dim - 1 if s.graph.absorbing else 0, dtype=torch.int64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("big", [710.0, 3.0e4])
def test_huge_log_score_moves_to_that_token(kind: str, predictor: str, backend: str, big: float) -> None:
    """One log-score far above the others (exp overflows float64): every move goes to that token."""
    s = _sampler(kind, predictor)
    x = _start(s, 256)
    log_score = torch.zeros(*x.shape, s.graph.dim)  # (B, L, dim) float32
    log_score[..., 2] = big
    for k in range(len(s.timesteps)):
        out = s.step(log_score, k, x, seed=k, backend=backend).prev_sample
        assert bool((out == 2).all()), f"step {k}: drew {out.unique().tolist()}, expected only token 2"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_minus_inf_is_probability_zero(kind: str, predictor: str, backend: str) -> None:
    s = _sampler(kind, predictor)
    x = _start(s, 2000)
    log_score = torch.zeros(*x.shape, s.graph.dim)
    log_score[..., 1] = -torch.inf  # token 1 is never drawn
    seen = set()
    for k in range(len(s.timesteps)):
        out = s.step(log_score, k, x, seed=10 + k, backend=backend).prev_sample
        seen |= set(out.unique().tolist())
        assert not bool((out == 1).any()), f"step {k}: a token of log-score -inf was drawn"
    assert seen - {x[0, 0].item()}, "nothing moved: the test would pass vacuously"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_all_minus_inf_but_current_stays(kind: str, backend: str) -> None:
    s = _sampler(kind, "analytic")
    x = _start(s, 64)
    log_score = torch.full((*x.shape, s.graph.dim), -torch.inf)
    out = s.step(log_score, 0, x, seed=1, backend=backend).prev_sample
    assert torch.equal(out, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_denoise_with_no_real_token_left_is_an_error(backend: str) -> None:
    s = _sampler("absorbing", "analytic")
    x = _start(s, 8)
    log_score = torch.full((*x.shape, s.graph.dim), -torch.inf)
    with pytest.raises(ValueError, match="log_score"):
        s.step(log_score, len(s.timesteps) - 1, x, seed=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_plus_inf_are_refused(kind: str, predictor: str, backend: str, bad: float) -> None:
    s = _sampler(kind, predictor)
    x = _start(s, 4)
    log_score = torch.zeros(*x.shape, s.graph.dim)
    log_score[1, 2, 1] = bad
    with pytest.raises(ValueError, match="log_score"):
        s.step(log_score, 0, x, seed=1, backend=backend)
