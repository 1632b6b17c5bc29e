"""Gradient checkpointing (issue 31): each transformer block is recomputed in the backward pass, and the
gradients are those without it, to float32 round-off (dropout included: its RNG is replayed)."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_run
from ddm.graphs import Absorbing
from ddm.model import ModelConfig, ScoreModel
from ddm.model.autoregressive import ARModel, sequence_nll
from ddm.schedules import LogLinear
from ddm.training import train
from ddm.training.objective import keyed_loss
from safetensors.torch import load_file

CFG = dict(hidden=32, heads=2, blocks=2, cond_dim=16, seq_len=16, dropout=0.1)


def _grads(model, loss_fn, checkpointing):
    model.grad_checkpointing = checkpointing
    model.zero_grad(set_to_none=True)
    calls = []
    block = model.blocks[0]
    name = "forward" if isinstance(model, ARModel) else "forward_kv"  # what the trunk calls
    original = getattr(block, name)

    def counted(*args):
        calls.append(1)
        return original(*args)

    setattr(block, name, counted)
    torch.manual_seed(7)  # the dropout draws
    loss_fn(model).backward()
    delattr(block, name)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)


def _randomise(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.train()


@pytest.mark.parametrize("kind", ["diffusion", "masked", "block", "autoregressive"])
def test_checkpointed_gradients_equal_the_plain_ones(kind):
    x0 = torch.randint(0, 9, (3, 16), generator=torch.Generator().manual_seed(1))
    if kind == "autoregressive":
        model = _randomise(ARModel(ModelConfig(**CFG), 9))

        def loss_fn(m):
            return sequence_nll(m, x0).sum()
    else:
        extra = {"subs": kind != "diffusion", "block_size": 4 if kind == "block" else 0}
        extra["time_conditioning"] = kind != "block"
        model = _randomise(ScoreModel(ModelConfig(**CFG, **extra), Absorbing(9), LogLinear()))

        def loss_fn(m):
            if kind == "block":
                fn = lambda x, s, x0: m(x, s, log_probs=True, x0=x0)  # noqa: E731
            else:
                fn = (lambda x, s: m(x, s, log_probs=True)) if kind == "masked" else m
            return keyed_loss(
                fn,
                m.graph,
                m.schedule,
                x0,
                seed=0,
                step=1,
                rows=torch.arange(3),
                objective=kind,
                block_size=4,
            ).sum()

    plain, calls_plain = _grads(model, loss_fn, False)
    ckpt, calls_ckpt = _grads(model, loss_fn, True)
    assert calls_plain >= 1 and calls_ckpt == 2 * calls_plain  # the block ran again in the backward pass
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_with_grad_checkpointing_gives_the_same_run(tmp_path):
    kw = dict(steps=3, dropout=0.1, objective="masked")
    a = load_file(str(train(tiny_run(tmp_path / "a", **kw)) / "model.safetensors"))
    b = load_file(str(train(tiny_run(tmp_path / "b", grad_checkpointing=True, **kw)) / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
