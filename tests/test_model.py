"""The score network: shapes, the zero at the current token, the absorbing parametrisation, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.model import EMA, ModelConfig, ScoreModel
from ddm.schedules import Geometric, LogLinear

TINY = dict(hidden=32, heads=2, blocks=2, cond_dim=16, seq_len=16, dropout=0.0)


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Gives every parameter (zero-initialised ones too) random values, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("graph", [Absorbing(7), Uniform(7)])
def test_output_shape_and_zero_at_current_token(graph):
    torch.manual_seed(0)
    model = ScoreModel(ModelConfig(**TINY), graph, LogLinear())
    _randomise(model)
    x = torch.randint(0, graph.dim, (3, 11))
    out = model(x, torch.tensor([0.1, 1.0, 5.0]))
    assert out.shape == (3, 11, graph.dim)
    assert out.dtype == torch.float32
    assert torch.all(out.gather(-1, x[..., None]) == 0)
    # off the current token the output is not identically zero and depends on the noise level
    other = model(x, torch.tensor([0.2, 2.0, 4.0]))
    assert not torch.allclose(out, other)


def test_absorbing_zero_init_is_the_closed_form_scale():
    graph = Absorbing(9)
    model = ScoreModel(ModelConfig(**TINY), graph, LogLinear())
    x = torch.randint(0, graph.dim, (2, 5))
    sigma = torch.tensor([1e-3, 3.0])
    out = model(x, sigma)
    # raw output 0, so l = -log(expm1(sigma)) - log(dim - 1) off the current token (docs/math.md section 4)
    expected = -torch.log(torch.expm1(sigma.double())) - math.log(graph.dim - 1)
    off = torch.ones_like(out, dtype=torch.bool).scatter(-1, x[..., None], False)
    for b in range(2):
        vals = out[b][off[b]]
        torch.testing.assert_close(vals, torch.full_like(vals, expected[b].item()), rtol=1e-6, atol=1e-6)


def test_time_independent_model_depends_on_sigma_only_through_the_scale():
    graph = Absorbing(6)
    model = ScoreModel(ModelConfig(**{**TINY, "time_conditioning": False}), graph, LogLinear())
    assert model.time_independent
    _randomise(model, 1)
    x = torch.randint(0, graph.dim, (2, 8))
    s1, s2 = torch.tensor([0.3, 0.3]), torch.tensor([2.0, 2.0])
    d = model(x, s1) - model(x, s2)
    shift = (torch.log(torch.expm1(s2)) - torch.log(torch.expm1(s1)))[0].item()
    off = torch.ones_like(d, dtype=torch.bool).scatter(-1, x[..., None], False)
    torch.testing.assert_close(d[off], torch.full_like(d[off], shift), rtol=1e-5, atol=1e-5)
    assert not ScoreModel(ModelConfig(**TINY), graph, LogLinear()).time_independent


def test_time_independent_needs_absorbing():
    with pytest.raises(ValueError, match="time_conditioning"):
        ScoreModel(ModelConfig(**{**TINY, "time_conditioning": False}), Uniform(5), Geometric())


def test_non_causal_attention_sees_the_future():
    graph = Uniform(5)
    model = ScoreModel(ModelConfig(**TINY), graph, Geometric())
    _randomise(model, 2)
    x = torch.randint(0, 5, (1, 10))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 5
    a, b = model(x, torch.tensor([1.0])), model(y, torch.tensor([1.0]))
    assert not torch.allclose(a[0, 0], b[0, 0])  # position 0 depends on the last token


def test_sizes_and_bad_configs():
    assert ModelConfig.from_size("small").hidden == 768
    assert ModelConfig.from_size("medium").blocks == 24
    with pytest.raises(ValueError, match="size"):
        ModelConfig.from_size("huge")
    with pytest.raises(ValueError, match="divisible"):
        ScoreModel(ModelConfig(**{**TINY, "heads": 3}), Absorbing(3), LogLinear())
    with pytest.raises(ValueError, match="dropout"):
        ScoreModel(ModelConfig(**{**TINY, "dropout": 1.5}), Absorbing(3), LogLinear())
    model = ScoreModel(ModelConfig(**TINY), Absorbing(3), LogLinear())
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, TINY["seq_len"] + 1, dtype=torch.long), 1.0)


def test_ema_warms_up_then_tracks():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, decay=0.5)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9))
    ema.update(model)  # decay min(0.5, 2/11)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 1 - 0.1 * 2 / 11))
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_matches_cpu_float32():
    graph = Absorbing(7)
    model = ScoreModel(ModelConfig(**TINY), graph, LogLinear())
    _randomise(model, 3)
    x = torch.randint(0, graph.dim, (2, 12))
    sigma = torch.tensor([0.5, 2.0])
    ref = model(x, sigma)
    out = model.cuda()(x.cuda(), sigma.cuda())
    assert out.dtype == torch.float32  # bf16 inside, float32 log-scores out
    torch.testing.assert_close(out.cpu(), ref, rtol=5e-2, atol=5e-2)
