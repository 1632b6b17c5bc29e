"""Checkpoints: round trip, atomic saves that survive a crash, no pickle, path resolution."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import tiny_run
from ddm.graphs import Absorbing
from ddm.io import checkpoint
from ddm.model import EMA, ModelConfig, ScoreModel
from ddm.schedules import LogLinear
from ddm.tokenizers import CharTokenizer
from ddm.training import train

RUN = {k: v for k, v in tiny_run("unused", steps=3, warmup_steps=1, save_every=3).items() if k != "run_dir"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    return train({**RUN, "run_dir": str(run_dir), "time_conditioning": False})


def _config(model, tok):
    return {
        "model": model.config.to_dict(),
        "graph": model.graph.to_config(),
        "schedule": model.schedule.to_config(),
        "tokenizer": tok.to_config(),
        "train": {},
    }


def test_round_trip_gives_the_same_outputs(trained):
    model = checkpoint.load(trained)
    assert not model.training
    assert model.time_independent and model.seq_len == 16
    assert isinstance(model.tokenizer, CharTokenizer) and model.tokenizer.vocab_size > 30
    assert model.checkpoint_path == trained
    # the loaded model computes exactly what the EMA weights compute in a fresh model
    state = checkpoint.read_training_state(trained)
    fresh = checkpoint.build_model(checkpoint.read_config(trained))
    fresh.load_state_dict(state["ema"])
    fresh.eval()
    x = torch.randint(0, model.tokenizer.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 1.0, 3.0])
    with torch.no_grad():
        assert torch.equal(model(x, sigma), fresh(x, sigma))
        raw = checkpoint.load(trained, ema=False)
        assert not torch.equal(raw(x, sigma), model(x, sigma))  # EMA and raw weights differ
    # a run directory resolves to its latest checkpoint
    assert checkpoint.resolve(trained.parent.parent) == trained
    assert checkpoint.resolve(trained.parent) == trained


def test_no_pickle_anywhere(trained, monkeypatch):
    names = sorted(p.name for p in trained.iterdir())
    assert names == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    json.loads((trained / "state.json").read_text())

    def refuse(*a, **k):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    checkpoint.load(trained)
    checkpoint.read_training_state(trained)


def test_crash_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    tok = CharTokenizer("abcd")
    model = ScoreModel(
        ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=8), Absorbing(4), LogLinear()
    )
    model.tokenizer = tok
    ema = EMA(model, 0.9)
    opt = torch.optim.AdamW(model.parameters())
    first = checkpoint.save(tmp_path, 1, model=model, config=_config(model, tok), ema=ema, optimizer=opt)
    before = checkpoint.load(tmp_path)

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real_save_file = checkpoint.save_file

    def dying_save_file(tensors, filename, *a, **k):
        if filename.endswith("optimizer.safetensors"):
            raise KeyboardInterrupt("killed mid-save")
        return real_save_file(tensors, filename, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, model=model, config=_config(model, tok), ema=ema, optimizer=opt)
    # LATEST still names the complete first checkpoint, whose weights are untouched
    assert checkpoint.latest(tmp_path) == first
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    after = checkpoint.load(tmp_path)
    for (k, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    monkeypatch.setattr(checkpoint, "save_file", real_save_file)
    second = checkpoint.save(tmp_path, 2, model=model, config=_config(model, tok), ema=ema, optimizer=opt)
    assert checkpoint.latest(tmp_path) == second
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the crashed save's leftovers are gone
    assert first.exists()  # keep=2
    third = checkpoint.save(
        tmp_path, 3, model=model, config=_config(model, tok), ema=ema, optimizer=opt, keep=2
    )
    assert not first.exists() and second.exists() and third.exists()


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        checkpoint.load(tmp_path)


def test_rng_state_round_trip():
    g = torch.Generator().manual_seed(3)
    state = checkpoint.rng_state({"g": g})
    json.dumps(state)
    a = (torch.rand(3), torch.rand(3, generator=g))
    checkpoint.set_rng_state(json.loads(json.dumps(state)), {"g": g})
    b = (torch.rand(3), torch.rand(3, generator=g))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
