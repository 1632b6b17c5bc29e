"""Noise schedules (docs/math.md section 3): the rate is the derivative of the total noise; the endpoints."""

from __future__ import annotations

import math

import pytest
import torch
from ddm.graphs import Absorbing
from ddm.schedules import Geometric, LogLinear, Schedule, from_config
from hypothesis import given, settings
from hypothesis import strategies as st

F64 = torch.float64

eps_values = st.floats(min_value=1e-6, max_value=0.5)
geometric_ranges = st.tuples(st.floats(-6, 0), st.floats(0.05, 3.0)).map(
    lambda p: (10.0 ** p[0], 10.0 ** (p[0] + p[1]))
)


def check_rate_is_derivative(schedule: Schedule) -> None:
    t = torch.linspace(0, 1, 101, dtype=F64).requires_grad_(True)
    sigma_bar, sigma = schedule(t)
    (grad,) = torch.autograd.grad(sigma_bar.sum(), t)
    torch.testing.assert_close(grad, sigma.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.rate_noise(t).detach(), sigma.detach(), rtol=0, atol=0)
    torch.testing.assert_close(schedule.total_noise(t).detach(), sigma_bar.detach(), rtol=0, atol=0)
    assert torch.all(sigma > 0) and torch.all(torch.diff(sigma_bar) > 0)


@settings(max_examples=30, deadline=None)
@given(eps=eps_values)
def test_loglinear_rate_is_derivative(eps: float) -> None:
    check_rate_is_derivative(LogLinear(eps))


@settings(max_examples=30, deadline=None)
@given(r=geometric_ranges)
def test_geometric_rate_is_derivative(r: tuple[float, float]) -> None:
    check_rate_is_derivative(Geometric(*r))


@settings(max_examples=30, deadline=None)
@given(eps=eps_values)
def test_loglinear_endpoints_and_masked_fraction(eps: float) -> None:
    s = LogLinear(eps)
    t = torch.linspace(0, 1, 51, dtype=F64)
    sigma_bar = s.total_noise(t)
    assert sigma_bar[0] == 0
    assert sigma_bar[-1].item() == pytest.approx(math.log(1 / eps), rel=1e-13)
    # masked fraction of the absorbing graph, 1 - exp(-sigma_bar), is exactly (1 - eps) t
    torch.testing.assert_close(-torch.expm1(-sigma_bar), (1 - eps) * t, rtol=1e-13, atol=1e-300)
    g = Absorbing(3)
    p_mask = g.transition(torch.zeros(51, dtype=torch.long), sigma_bar)[:, g.mask_id]
    torch.testing.assert_close(p_mask, (1 - eps) * t, rtol=1e-13, atol=1e-300)


@settings(max_examples=30, deadline=None)
@given(r=geometric_ranges)
def test_geometric_endpoints(r: tuple[float, float]) -> None:
    lo, hi = r
    s = Geometric(lo, hi)
    sigma_bar, sigma = s(torch.tensor([0.0, 1.0], dtype=F64))
    torch.testing.assert_close(sigma_bar, torch.tensor([lo, hi], dtype=F64), rtol=1e-13, atol=0)
    torch.testing.assert_close(sigma, sigma_bar * math.log(hi / lo), rtol=1e-13, atol=0)
    mid = s.total_noise(torch.tensor(0.5, dtype=F64)).item()
    assert mid == pytest.approx(math.sqrt(lo * hi), rel=1e-13)


def test_dtypes_and_shapes() -> None:
    for s in [LogLinear(), Geometric()]:
        a, b = s(0.25)
        assert a.shape == () and a.dtype == torch.get_default_dtype() and b.dtype == a.dtype
        t = torch.rand(3, 4, dtype=F64)
        a, b = s(t)
        assert a.shape == (3, 4) and a.dtype == F64 and b.dtype == F64
        assert s(torch.tensor([0, 1])).__getitem__(0).dtype == torch.get_default_dtype()


def test_config_round_trip() -> None:
    for s in [LogLinear(1e-4), Geometric(1e-3, 10.0)]:
        cfg = s.to_config()
        assert from_config(cfg) == s
        assert type(from_config(cfg)) is type(s)
    assert LogLinear().to_config() == {"type": "loglinear", "eps": 1e-3}
    assert Geometric().to_config() == {"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20.0}
    assert from_config({"type": "loglinear"}) == LogLinear()


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: LogLinear(0.0), ValueError, "eps"),
        (lambda: LogLinear(1.0), ValueError, "eps"),
        (lambda: LogLinear(-0.1), ValueError, "eps"),
        (lambda: LogLinear(math.nan), ValueError, "eps"),
        (lambda: LogLinear("0.1"), TypeError, "eps"),
        (lambda: Geometric(0.0, 1.0), ValueError, "sigma_min"),
        (lambda: Geometric(2.0, 1.0), ValueError, "sigma_min < sigma_max"),
        (lambda: Geometric(1.0, 1.0), ValueError, "sigma_min < sigma_max"),
        (lambda: Geometric(1e-4, math.inf), ValueError, "sigma_max"),
        (lambda: LogLinear()(1.5), ValueError, "t must lie in"),
        (lambda: LogLinear()(-0.1), ValueError, "t must lie in"),
        (lambda: Geometric()(torch.tensor([0.5, 1.01])), ValueError, "t must lie in"),
        (lambda: Geometric().total_noise(torch.tensor([math.nan])), ValueError, "t must lie in"),
        (lambda: LogLinear().rate_noise("a"), TypeError, "t must be"),
        (lambda: from_config({"type": "cosine"}), ValueError, "type"),
        (lambda: from_config({"type": "loglinear", "sigma_min": 1.0}), ValueError, "unknown"),
        (lambda: from_config(["loglinear"]), TypeError, "dict"),
    ],
)
def test_bad_input(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()
