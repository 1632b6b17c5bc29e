"""`ddm train --init-from` (issue 31): a run starts from a trained model's weights, records where it
started, resumes exactly, and refuses a model whose graph, output or tokenizer does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import tiny_run
from ddm.errors import CheckpointError, DataError
from ddm.io import checkpoint as ckpt
from ddm.io.load import load
from ddm.io.sedd import export_sedd
from ddm.training import train
from safetensors.torch import load_file


def _pairs(tmp_path, name="pairs.jsonl", letters="abcd"):
    rows = [
        {"prompt": letters[i % 4] * (1 + i % 3) + "=", "response": letters[(i + 1) % 4] * 2}
        for i in range(24)
    ]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path, name, data, **kw):
    base = dict(data=str(data), pairs=True, dropout=0.0, val_fraction=0.25, objective="masked", steps=2)
    return tiny_run(tmp_path / name, **{**base, **kw})


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    return train(_run(tmp, "base", _pairs(tmp), steps=3)), tmp


def test_the_run_starts_from_the_weights_and_records_them(tmp_path, base):
    path, _ = base
    start = train(_run(tmp_path, "ft", _pairs(tmp_path), init_from=str(path)), until_step=0)
    assert start.name == "step_00000000"
    assert _equal(load_file(str(start / "model.safetensors")), load(path).state_dict())
    record = ckpt.read_config(start)["init_from"]
    assert record["source"] == str(path) and record["path"] == str(path)
    assert ckpt.read_config(start)["tokenizer"] == ckpt.read_config(path)["tokenizer"]


def test_fine_tuning_resumes_exactly(tmp_path, base):
    path, _ = base
    data = _pairs(tmp_path)
    full = train(_run(tmp_path, "full", data, init_from=str(path), steps=4))
    train(_run(tmp_path, "split", data, init_from=str(path), steps=4), until_step=2)
    resumed = train(_run(tmp_path, "split", data, init_from=str(path), steps=4), resume=True)
    for name in ("model", "ema", "optimizer"):
        assert _equal(
            load_file(str(full / f"{name}.safetensors")), load_file(str(resumed / f"{name}.safetensors"))
        )


def test_a_sedd_checkpoint_starts_a_run(tmp_path):
    data = _pairs(tmp_path)
    base = train(_run(tmp_path, "b", data, objective="diffusion", tokenizer="bytes", steps=1))
    sedd = export_sedd(load(base), tmp_path / "sedd")
    start = train(
        _run(tmp_path, "ft", data, objective="diffusion", tokenizer="bytes", init_from=str(sedd)),
        until_step=0,
    )
    assert _equal(load_file(str(start / "model.safetensors")), load(sedd).state_dict())
    with pytest.raises(CheckpointError, match="carries no tokenizer"):
        train(_run(tmp_path, "ft2", data, objective="diffusion", init_from=str(sedd)))


def test_a_model_that_does_not_fit_is_refused(tmp_path, base):
    path, _ = base
    data = _pairs(tmp_path)
    with pytest.raises(CheckpointError, match="has the 'absorbing' graph.*graph = 'uniform'"):
        train(_run(tmp_path, "g", data, init_from=str(path), graph="uniform", objective="diffusion"))
    with pytest.raises(CheckpointError, match="built for the masked NELBO"):
        train(_run(tmp_path, "o", data, init_from=str(path), objective="diffusion"))
    with pytest.raises(CheckpointError, match="is a diffusion model"):
        train(_run(tmp_path, "a", data, init_from=str(path), objective="autoregressive"))
    other = _pairs(tmp_path, "other.jsonl", letters="wxyz")
    with pytest.raises(DataError, match="its tokenizer does not fit the data"):
        train(_run(tmp_path, "t", other, init_from=str(path)))
    with pytest.raises(CheckpointError, match="no such file"):
        train(_run(tmp_path, "m", data, init_from=str(tmp_path / "missing")))


def test_ddm_train_init_from_and_grad_checkpointing_on_the_command_line(tmp_path, base, capsys):
    # imported here: only this test drives the CLI
    from ddm.cli import main

    path, _ = base
    cfg = tmp_path / "ft.toml"
    cfg.write_text(
        f'run_dir = "{tmp_path / "run"}"\ndata = "{_pairs(tmp_path)}"\npairs = true\nobjective = "masked"\n'
        "hidden = 32\nheads = 2\nblocks = 1\ncond_dim = 16\nseq_len = 16\nbatch_size = 4\nwarmup_steps = 1\n"
        "eval_every = 0\nsave_every = 2\nprogress = false\nplot = false\n"
    )
    args = ["train", "--config", str(cfg), "--steps", "2", "--init-from", str(path), "--grad-checkpointing"]
    assert main(args) == 0
    last = ckpt.latest(tmp_path / "run")
    saved = ckpt.read_config(last)
    assert saved["init_from"]["source"] == str(path) and saved["train"]["grad_checkpointing"] is True
