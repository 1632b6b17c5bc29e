"""Checkpoints: round trip, atomic saves that survive a crash, no pickle, path resolution, the manifest,
the run directory (`ddm.io.run`), falling back to an intact checkpoint, file modes.

Damaged files and failing writes, case by case, are in `test_bad_input.py`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import warnings

import pytest
import torch
from _tiny import tiny_run
from ddm.errors import CheckpointError
from ddm.graphs import Absorbing
from ddm.io import checkpoint, run
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
        "manifest.json",
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
    real_write = checkpoint.write_safetensors

    def dying_write(path, tensors):
        if str(path).endswith("optimizer.safetensors"):
            raise KeyboardInterrupt("killed mid-save")
        return real_write(path, tensors)

    monkeypatch.setattr(checkpoint, "write_safetensors", dying_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, model=model, config=_config(model, tok), ema=ema, optimizer=opt)
    # LATEST still names the complete first checkpoint, whose weights are untouched
    assert checkpoint.latest(tmp_path) == first
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    after = checkpoint.load(tmp_path)
    for (k, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the failed save removed its directory
    monkeypatch.setattr(checkpoint, "write_safetensors", real_write)
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


def _small(tmp_path, steps=(1,)):
    tok = CharTokenizer("abcd")
    model = ScoreModel(
        ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=8), Absorbing(4), LogLinear()
    )
    model.tokenizer = tok
    paths = [checkpoint.save(tmp_path, s, model=model, config=_config(model, tok), keep=3) for s in steps]
    return model, paths


def test_manifest_lists_every_file_with_its_digest(trained):
    manifest = json.loads((trained / run.MANIFEST).read_text())
    others = sorted(p.name for p in trained.iterdir() if p.name != run.MANIFEST)
    assert sorted(manifest["files"]) == others
    for name, entry in manifest["files"].items():
        data = (trained / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["step"] == json.loads((trained / "state.json").read_text())["step"]
    run.verify(trained)  # intact: no error


def test_run_directory_functions(tmp_path):
    assert run.steps(tmp_path) == [] and run.latest(tmp_path) is None and run.latest_intact(tmp_path) is None
    _, (one, two, three) = _small(tmp_path, steps=(1, 2, 30))
    assert run.steps(tmp_path) == [1, 2, 30]
    assert run.step_dir(tmp_path, 30) == three and run.step_of(three) == 30 and run.step_of(tmp_path) is None
    assert run.latest(tmp_path) == three == run.latest_intact(tmp_path) == checkpoint.latest(tmp_path)
    assert run.previous(three) == two and run.previous(one) is None
    assert run.log_path(tmp_path) == tmp_path / "log.jsonl"
    assert run.run_dir_of(two) == tmp_path and run.run_dir_of(tmp_path) is None
    assert run.checkpoints_dir(tmp_path) == tmp_path / "checkpoints"
    assert run.checkpoint_kind(three) == "manifest" and run.checkpoint_kind(tmp_path) is None
    (three / run.MANIFEST).unlink()
    assert run.checkpoint_kind(three) == "legacy"


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    _, (one, two, three) = _small(tmp_path, steps=(1, 2, 3))
    data = bytearray((three / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (three / "model.safetensors").write_bytes(bytes(data))
    with pytest.warns(
        UserWarning, match=r"step_00000003.*model.safetensors.*newest intact checkpoint.*step_00000002"
    ):
        assert checkpoint.latest(tmp_path) == two
    # loading names the damaged file and offers the previous checkpoint
    with pytest.raises(CheckpointError, match=rf"model.safetensors.*previous checkpoint is {two}"):
        checkpoint.read_training_state(tmp_path)
    # LATEST naming a step that is gone: loading says which exist, resuming takes the newest intact one
    (tmp_path / "checkpoints" / "LATEST").write_text("step_00000009\n")
    with pytest.raises(
        CheckpointError, match="names step_00000009.*step_00000001, step_00000002, step_00000003"
    ):
        checkpoint.load(tmp_path)
    with pytest.warns(UserWarning, match="names step_00000009.*using the newest intact checkpoint"):
        assert checkpoint.latest(tmp_path) == two
    shutil.rmtree(two)
    (one / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint to fall back to"):
        checkpoint.latest(tmp_path)


def test_resume_of_a_damaged_run_continues_from_the_intact_checkpoint(tmp_path):
    cfg = tiny_run(tmp_path / "run", steps=4, save_every=2)
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "step_00000004"
    data = bytearray((last / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (last / "model.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step_00000002"):
        path = train({**cfg, "steps": 6}, resume=True)
    assert path.name == "step_00000006"
    run.verify(path)


def test_legacy_checkpoint_loads_with_one_warning(tmp_path):
    model, (path,) = _small(tmp_path)
    (path / run.MANIFEST).unlink()
    with pytest.warns(UserWarning, match="has no manifest.json") as record:
        checkpoint.load(tmp_path)
    assert len([w for w in record if "manifest" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.load(tmp_path)  # once per directory


def test_training_checkpoint_without_ema_is_damaged_not_a_model_folder(tmp_path):
    _, (path,) = _small(tmp_path)
    (path / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors: missing, though the manifest lists it"):
        checkpoint.load(path)


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _, (path,) = _small(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644) and "model.safetensors" in modes
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "checkpoints" / "LATEST").stat().st_mode) == 0o644


def test_saved_bytes_are_safetensors_bytes(tmp_path):
    from safetensors.torch import load_file, save  # noqa: PLC0415 (the reference writer, only here)

    model, (path,) = _small(tmp_path)
    weights = load_file(str(path / "model.safetensors"))
    assert (path / "model.safetensors").read_bytes() == save(weights)
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)
