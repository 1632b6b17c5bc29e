"""The optimizer: AdamW, or Muon on the blocks' matrices with AdamW on the rest (ddm.training.optim)."""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch
from _tiny import TINY_MODEL, tiny_run
from ddm.graphs import Absorbing
from ddm.io.checkpoint import _flatten_optimizer, _unflatten_optimizer
from ddm.model import ModelConfig, ScoreModel
from ddm.model.autoregressive import ARModel
from ddm.schedules import LogLinear
from ddm.training import train
from ddm.training.config import TrainConfig
from ddm.training.optim import make_optimizer, muon_parameter

SMALL = dict(TINY_MODEL, blocks=2, dropout=0.0)


def _models():
    torch.manual_seed(0)
    return {
        "score": ScoreModel(ModelConfig(**SMALL), Absorbing(7), LogLinear()),
        "ar": ARModel(ModelConfig(**SMALL), 7),
    }


def _cfg(**kw):
    return TrainConfig.from_dict(dict(optimizer="muon", lr=1e-2, **kw))


def _loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 7, (3, SMALL["seq_len"]), generator=g)
    if isinstance(model, ARModel):
        return model(x).float().logsumexp(-1).mean()
    return model(x, torch.full((3,), 0.5)).float().pow(2).mean()


def _randomise(model):
    # adaLN-Zero starts the blocks' gates at zero, so the matrices get no gradient at first; move every
    # parameter off its initial value so that each receives one
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind", ["score", "ar"])
def test_muon_takes_exactly_the_block_matrices(kind):
    model = _models()[kind]
    opt = make_optimizer(model, _cfg())
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in opt.adamw.param_groups for p in g["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter exactly once
    matrices = ("qkv.weight", "attn_out.weight", "mlp.0.weight", "mlp.2.weight")
    expected = [f"blocks.{i}.{m}" for i in range(SMALL["blocks"]) for m in matrices]
    assert sorted(muon) == sorted(expected)
    kept = ("bias", "norm1.weight", "norm2.weight", "modulation.weight")
    assert all(not n.startswith("blocks.") or n.endswith(kept) for n in adamw)
    assert "embed.weight" in adamw
    assert not muon_parameter("embed.weight", model.embed.weight)


@pytest.mark.parametrize("kind", ["score", "ar"])
def test_each_part_steps_as_its_own_torch_optimizer(kind):
    # the composite is a dispatch: Muon's parameters move as torch.optim.Muon alone would move them, the
    # rest as AdamW alone, at one learning rate written through param_groups (as the lr schedule does)
    model = _models()[kind]
    _randomise(model)
    ref = copy.deepcopy(model)
    opt = make_optimizer(model, _cfg())
    named = dict(ref.named_parameters())
    mu = [p for n, p in named.items() if muon_parameter(n, p)]
    rest = [p for n, p in named.items() if not muon_parameter(n, p)]
    ref_opts = [
        torch.optim.Muon(mu, lr=1e-2, weight_decay=0.0, momentum=0.95, adjust_lr_fn="match_rms_adamw"),
        torch.optim.AdamW(rest, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True),
    ]
    for step, lr in enumerate([3e-3, 1e-2, 5e-3]):
        for group in opt.param_groups:
            group["lr"] = lr
        for o in ref_opts:
            for group in o.param_groups:
                group["lr"] = lr
        for m in (model, ref):
            _loss(m, step).backward()
        opt.step()
        for o in ref_opts:
            o.step()
        opt.zero_grad()
        for o in ref_opts:
            o.zero_grad()
    moved = 0
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)  # the same kernels: bit for bit
    for (n, p), p0 in zip(model.named_parameters(), _models()[kind].parameters(), strict=True):
        moved += muon_parameter(n, p) and not torch.equal(p, p0)
    assert moved == 4 * SMALL["blocks"]  # every Muon matrix was updated


def test_state_dict_round_trips_through_the_checkpoint_layout():
    model = _models()["score"]
    _randomise(model)
    opt = make_optimizer(model, _cfg())
    for step in range(2):
        _loss(model, step).backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = _flatten_optimizer(opt.state_dict())  # what ddm.io.checkpoint writes
    assert any(k.endswith("momentum_buffer") for k in tensors) and any(k.endswith("exp_avg") for k in tensors)
    twin_model = copy.deepcopy(model)
    twin = make_optimizer(twin_model, _cfg())
    # through safetensors bytes as through the file (a load must not share the live buffers)
    twin.load_state_dict(_unflatten_optimizer(safetensors.torch.load(safetensors.torch.save(tensors)), meta))
    for m, o in ((model, opt), (twin_model, twin)):
        _loss(m, 5).backward()
        o.step()
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_state_of_another_layout_is_refused():
    opt = make_optimizer(_models()["score"], _cfg())
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict({**sd, "param_groups": sd["param_groups"][:1]})
    plain = torch.optim.AdamW(_models()["score"].parameters()).state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(plain)


def test_config_refuses_unknown_optimizer_and_bad_momentum():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd").validate()
    with pytest.raises(ValueError, match="muon_momentum"):
        TrainConfig(optimizer="muon", muon_momentum=1.0).validate()
    assert isinstance(make_optimizer(_models()["ar"], TrainConfig()), torch.optim.AdamW)


def test_muon_needs_block_matrices():
    with pytest.raises(ValueError, match="no transformer-block matrices"):
        make_optimizer(torch.nn.Linear(3, 3), _cfg())


@pytest.mark.parametrize("objective", ["masked", "autoregressive"])
def test_muon_run_resumes_exactly_and_refuses_another_optimizer(tmp_path, objective):
    base = dict(steps=6, save_every=3, objective=objective, optimizer="muon", lr=1e-2)
    if objective == "masked":
        base.update(time_conditioning=False, t_sampling="masks")
    full = train(tiny_run(tmp_path / "full", **base))
    train(tiny_run(tmp_path / "split", **base), until_step=3)
    resumed = train(tiny_run(tmp_path / "split", **base), resume=True)
    from safetensors.torch import load_file

    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(str(p / f"{name}.safetensors")) for p in (full, resumed))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(ValueError, match="optimizer"):
        train(tiny_run(tmp_path / "split", **{**base, "optimizer": "adamw", "steps": 8}), resume=True)
    # and it trained: the block matrices moved from their initial values
    early = load_file(str(tmp_path / "split" / "checkpoints" / "step_00000003" / "model.safetensors"))
    late = load_file(str(resumed / "model.safetensors"))
    assert not torch.equal(early["blocks.0.qkv.weight"], late["blocks.0.qkv.weight"])
