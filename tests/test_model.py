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


# ---- the CPU forward of issue 17: the same function with fewer passes ----------------------------------


def _reference_forward(model: ScoreModel, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The forward as written before issue 17 (LN, then modulate; rotary by stacked halves; gates as
    multiply-add; the noise embedding per row), float64 throughout: the oracle of the fused forward."""
    import torch.nn.functional as F
    from ddm.graphs import log_expm1

    d = torch.float64
    B, L = x.shape
    sig = sigma.to(d)

    def lin(layer, a):
        return F.linear(a, layer.weight.to(d), None if layer.bias is None else layer.bias.to(d))

    def ln(norm, a):
        return F.layer_norm(a, norm.normalized_shape, norm.weight.to(d), None, norm.eps)

    def rot(a, cos, sin):
        a1, a2 = a.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack([a1 * cos - a2 * sin, a1 * sin + a2 * cos], dim=-1).flatten(-2)

    ne = model.noise_embed
    from ddm.model.embeddings import sinusoidal_features

    c = F.silu(lin(ne.mlp[2], F.silu(lin(ne.mlp[0], sinusoidal_features(sig, ne.frequency_dim).to(d)))))
    h = model.embed.weight.to(d)[x]
    cos, sin = (t.to(d) for t in model.rotary(L))
    for blk in model.blocks:
        D = h.shape[-1]
        s1, c1, g1, s2, c2, g2 = lin(blk.modulation, c)[:, None].chunk(6, dim=-1)
        a = ln(blk.norm1, h) * (1 + c1) + s1
        q, k, v = lin(blk.qkv, a).view(B, L, 3, blk.heads, D // blk.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(rot(q, cos, sin), rot(k, cos, sin), v)
        h = h + g1 * lin(blk.attn_out, o.transpose(1, 2).reshape(B, L, D))
        m = lin(blk.mlp[2], F.gelu(lin(blk.mlp[0], ln(blk.norm2, h) * (1 + c2) + s2), approximate="tanh"))
        h = h + g2 * m
    shift, scale = lin(model.final.modulation, c)[:, None].chunk(2, dim=-1)
    raw = lin(model.final.linear, ln(model.final.norm, h) * (1 + scale) + shift)
    raw = raw - log_expm1(sig)[:, None, None] - math.log(model.dim - 1)
    return raw.scatter(-1, x[..., None], 0.0)


@pytest.mark.parametrize("same_sigma", [True, False], ids=["one-sigma", "per-row-sigma"])
def test_fused_forward_is_the_reference_forward(same_sigma: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=48, heads=4, blocks=2, cond_dim=16, seq_len=24, dropout=0.0)
    model = ScoreModel(cfg, Absorbing(9), LogLinear()).eval()
    for p in model.parameters():  # away from the zero init: every branch matters
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 10, (5, 24), generator=torch.Generator().manual_seed(1))
    sigma = torch.full((5,), 0.8) if same_sigma else torch.rand(5) * 3 + 0.1
    want = _reference_forward(model, x, sigma)
    with torch.no_grad():
        got = model(x, sigma)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # with gradients on (training) the per-row noise path is taken: the same function
    torch.testing.assert_close(model(x, sigma).detach().double(), want, rtol=1e-5, atol=1e-5)


def test_cpu_bf16_is_an_opt_in_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import ddm.model.transformer as tr

    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16, dropout=0.0)
    model = ScoreModel(cfg, Absorbing(5), LogLinear()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 6, (3, 16), generator=torch.Generator().manual_seed(2))
    sigma = torch.full((3,), 0.5)
    with torch.no_grad():
        fp32 = model(x, sigma)
        assert model.cpu_bf16 is False
        model.cpu_bf16 = True
        monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: False)  # no native bf16: float32 as before
        assert torch.equal(model(x, sigma), fp32)
        monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: True)
        bf16 = model(x, sigma)  # bf16 autocast: close, not equal
        assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
        torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.1)


# ---- the CPU attention path (issue 18): explicit float32 softmax(q k^T) v at short lengths -------------


@pytest.mark.parametrize("kind", ["full", "mask", "causal", "cached"])
def test_cpu_explicit_attention_is_sdpa_in_float32(kind: str) -> None:
    """bf16 inputs on the CPU at `Lq x Lk <= CPU_EXPLICIT_ATTENTION_MAX` take the explicit path; its
    output and gradients are SDPA's in float32 on the same inputs, up to the final bf16 rounding."""
    import torch.nn.functional as F
    from ddm.model.blocks import block_mask
    from ddm.model.transformer import CPU_EXPLICIT_ATTENTION_MAX, attention

    g = torch.Generator().manual_seed(3)
    Lq, Lk = (8, 24) if kind == "cached" else (24, 24)
    assert Lq * Lk <= CPU_EXPLICIT_ATTENTION_MAX
    q = (2 * torch.randn(3, 2, Lq, 16, generator=g)).to(torch.bfloat16).requires_grad_()
    k, v = (
        (2 * torch.randn(3, 2, Lk, 16, generator=g)).to(torch.bfloat16).requires_grad_() for _ in range(2)
    )
    mask, causal = None, kind == "causal"
    if kind in ("mask", "cached"):  # a block-diffusion mask: own noisy block, clean past (rows never empty)
        qp, kp = torch.arange(Lk - Lq, Lk), torch.arange(Lk)
        mask = block_mask(qp, torch.ones(Lq, dtype=torch.bool), kp, kp >= Lk - Lq, 8, 2)
    up = torch.randn(3, 2, Lq, 16, generator=g)
    out = attention(q, k, v, mask, 0.0, causal)
    assert out.dtype == torch.bfloat16
    (out.float() * up).sum().backward()
    got = [out.detach().float()] + [t.grad.float() for t in (q, k, v)]

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask, is_causal=causal)
    (ref * up).sum().backward()
    want = [ref.detach()] + [t.grad for t in (q32, k32, v32)]
    # one bf16 rounding of each result (2^-9 relative) and nothing more
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2**-8, atol=2**-8 * float(b.abs().max()))
    # and it is not the no-mask function: the mask and the causal flag are applied
    if kind != "full":
        free = F.scaled_dot_product_attention(q32, k32, v32)
        assert (free - got[0]).abs().max() > 0.1


def test_cpu_attention_takes_sdpa_past_the_threshold_and_with_dropout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ddm.model.transformer as tr
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(1, 1, 16, 8).to(torch.bfloat16)
    tr.attention(x, x, x)
    assert calls == []  # short, bf16, no dropout: explicit
    tr.attention(x, x, x, dropout_p=0.5)
    tr.attention(x.float(), x.float(), x.float())  # float32: the fused kernel is as fast there
    monkeypatch.setattr(tr, "CPU_EXPLICIT_ATTENTION_MAX", 15 * 16)
    tr.attention(x, x, x)
    assert len(calls) == 3


def test_hub_methods_go_through_the_storage_that_io_registers(monkeypatch):
    """The model layer declares save_pretrained / from_pretrained / push_to_hub; the io layer implements
    them (registered by `import ddm`), so no import points from the model up to io."""
    import ddm.io  # noqa: F401 (the layer that registers the storage)
    from ddm.errors import DdmError
    from ddm.model import pretrained

    assert pretrained._storage is not None and pretrained._storage.load is ddm.io.load
    calls = []

    class Fake:
        def save_pretrained(self, model, path, **kw):
            calls.append(("save", path, kw))

        def load(self, name, **kw):
            calls.append(("load", name, kw))
            return "not a model"

        def push_to_hub(self, model, repo_id, **kw):
            calls.append(("push", repo_id, kw))

    monkeypatch.setattr(pretrained, "_storage", Fake())
    model = ScoreModel(
        ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=8), Absorbing(4), LogLinear()
    )
    model.save_pretrained("d", bound=None)
    model.push_to_hub("u/r", private=True)
    with pytest.raises(TypeError, match="holds a str, not a ScoreModel"):
        ScoreModel.from_pretrained("u/r", revision="main")
    assert calls == [
        ("save", "d", {"bound": None}),
        ("push", "u/r", {"private": True}),
        ("load", "u/r", {"revision": "main"}),
    ]
    monkeypatch.setattr(pretrained, "_storage", None)
    with pytest.raises(DdmError, match="import ddm"):
        model.save_pretrained("d")
