"""Epoch training (issue 32): the epoch order, steps from epochs, the best checkpoint, early stopping.

The epoch order must read every window of an epoch once, reshuffle by epoch, not depend on how a batch is
split, resume mid-epoch bit-identically, and give two processes the run of one. The tiny corpus (the first
400 characters of Hamlet, 360 for training: 21 windows of 16, 5.25 steps of 4 per epoch) makes batches
straddle epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import tiny_run
from ddm.assets import bundled_text
from ddm.data.corpus import Corpus
from ddm.data.order import EpochOrder, RandomOrder, epoch_windows
from ddm.errors import DataError, InvalidArgument
from ddm.io import checkpoint
from ddm.training import train
from ddm.training.config import TrainConfig
from ddm.training.distributed import torchrun_command
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _text(tmp_path: Path, chars: int = 400) -> str:
    path = tmp_path / f"hamlet{chars}.txt"
    path.write_text(bundled_text()[:chars])
    return str(path)


def _run(tmp_path: Path, name: str, **kw) -> dict:
    base = dict(data=_text(tmp_path), dropout=0.0, epochs=3.0, steps=0, eval_every_epochs=1.0, save_every=100)
    return tiny_run(tmp_path / name, **{**base, **kw})


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {k: load_file(str(path / f"{k}.safetensors")) for k in ("model", "ema", "optimizer")}


# -- the order ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_train,seq_len", [(16, 16), (30, 16), (31, 16), (360, 16), (1000, 7), (64, 1)])
def test_windows_fit_at_every_phase(n_train, seq_len):
    w, phases = epoch_windows(n_train, seq_len)
    assert w >= 1 and 1 <= phases <= seq_len
    assert (phases - 1) + w * seq_len <= n_train  # the last window of the last phase ends inside the split
    if n_train >= 2 * seq_len - 1:
        assert phases == seq_len and w >= n_train // seq_len - 1


def test_each_epoch_reads_every_window_once_in_a_fresh_order():
    n, seq_len, batch = 203, 8, 4
    corpus = Corpus(np.arange(n + 20), None, val_fraction=20 / (n + 20))  # token i is position i
    order = EpochOrder(corpus, seq_len, seed=5, batch_size=batch)
    w = order.windows
    assert (w, order.phases) == (24, 8) and corpus.n_train == n
    steps = order.steps_for(4.0)
    assert steps == 24
    x = torch.cat([order.batch(s, torch.arange(batch)) for s in range(steps)])  # (96, L): 4 epochs
    assert torch.equal(x - x[:, :1], torch.arange(seq_len).expand_as(x))  # contiguous windows
    assert int(x.max()) < n  # never the held-out tail
    starts = x[:, 0].reshape(4, w)
    phases = starts % seq_len
    assert all(len(set(p.tolist())) == 1 for p in phases)  # one phase per epoch
    for e in range(4):  # every window of the epoch once
        assert sorted(starts[e].tolist()) == [int(phases[e, 0]) + k * seq_len for k in range(w)]
    assert len({tuple((s // seq_len).tolist()) for s in starts}) == 4  # a fresh order each epoch
    assert len(set(phases[:, 0].tolist())) > 1  # and fresh cut points
    # any split of the rows reads the same windows; another seed reads others
    split = torch.cat([order.batch(7, torch.arange(i, j)) for i, j in ((0, 1), (1, 3), (3, 4))])
    assert torch.equal(split, x[28:32])
    fresh = EpochOrder(corpus, seq_len, seed=5, batch_size=batch)  # no cache: the same plan
    assert torch.equal(fresh.batch(13, torch.arange(batch)), x[52:56])
    assert not torch.equal(EpochOrder(corpus, seq_len, 6, batch).batch(0, torch.arange(batch)), x[:4])
    assert RandomOrder(corpus, seq_len, 5, batch).epoch_at(24) == pytest.approx(96 * 8 / n)
    assert order.epoch_at(24) == 4.0


def test_a_corpus_smaller_than_one_batch_of_windows_is_named(tmp_path):
    corpus = Corpus(np.arange(100), None, val_fraction=0.0)
    with pytest.raises(DataError, match=r"100 tokens: 5 windows of seq_len = 16, fewer than one batch of "):
        EpochOrder(corpus, 16, 0, 8).check_batch_fits()
    cfg = _run(tmp_path, "small", data=_text(tmp_path, 80), batch_size=8)
    with pytest.raises(DataError, match=r"the training split has 72 tokens: 3 windows .* at least 143"):
        train(cfg)


# -- the config -----------------------------------------------------------------------------------------


def test_epochs_derive_the_steps_and_a_disagreeing_steps_is_an_error(tmp_path):
    assert TrainConfig.from_dict({"epochs": 3}).steps == 0  # derived by the Trainer
    assert TrainConfig.from_dict({"epochs": 3, "steps": 7}).steps == 7  # checked by the Trainer
    with pytest.raises(InvalidArgument, match="steps must be a positive integer"):
        TrainConfig.from_dict({"steps": 0})
    with pytest.raises(InvalidArgument, match="data_order must be"):
        TrainConfig.from_dict({"data_order": "sorted"})
    with pytest.raises(InvalidArgument, match="early_stop = 2 needs periodic held-out evaluation"):
        TrainConfig.from_dict({"early_stop": 2, "eval_every": 0})
    with pytest.raises(InvalidArgument, match="epochs must be a finite number"):
        TrainConfig.from_dict({"epochs": -1.0})
    cfg = _run(tmp_path, "bad", steps=15)  # 3 epochs are 16 steps of 4 on this corpus
    with pytest.raises(InvalidArgument, match=r"epochs = 3 is 16 optimizer steps .* steps = 15 was given"):
        train(cfg)
    no_val = _run(tmp_path, "noval", val_fraction=0.0, early_stop=1)
    with pytest.raises(InvalidArgument, match="early_stop = 1 needs a held-out split .* 0 held-out tokens"):
        train(no_val)


def test_the_cli_derives_steps_from_epochs(tmp_path, capsys):
    from ddm.cli import main  # the CLI's own config path (flags over defaults)

    run = str(tmp_path / "cli")
    data = _text(tmp_path)
    assert main(["train", "--print-config", "--epochs", "2", "--run-dir", run]) == 0
    assert "steps = 0  #" in capsys.readouterr().out
    base = ["train", "--data", data, "--run-dir", run, "--no-progress", "--seq-len", "16"]  # fmt: skip
    base += ["--batch-size", "4", "--hidden", "32", "--heads", "2", "--blocks", "1", "--cond-dim", "16"]
    assert main([*base, "--epochs", "2", "--steps", "5"]) == 2
    assert "epochs = 2 is 11 optimizer steps on this corpus, but steps = 5" in capsys.readouterr().err
    # a run of 1 epoch, extended to 2 on resume: --epochs replaces the saved steps (6 -> 11)
    assert main([*base, "--epochs", "1"]) == 0
    assert "step_00000006" in capsys.readouterr().out
    assert main(["train", "--resume", "--run-dir", run, "--epochs", "2"]) == 0
    assert "step_00000011" in capsys.readouterr().out


# -- training -------------------------------------------------------------------------------------------


def test_epochs_log_evaluate_per_epoch_and_keep_the_best(tmp_path):
    last = train(_run(tmp_path, "run", keep_best=True))
    assert last.name == "step_00000016"  # ceil(3 * 21 / 4)
    log = _log(tmp_path / "run")
    evals = [r for r in log if "eval_bits_per_token" in r]
    # evaluated where the epoch count passes 1, 2 (steps 6 and 11: 24 and 44 samples of 21 per epoch) and 3
    assert [r["step"] for r in evals] == [6, 11, 16]
    assert [int(r["epoch"]) for r in evals] == [1, 2, 3]
    train_recs = [r for r in log if "loss" in r]
    assert train_recs[3]["epoch"] == pytest.approx(16 / 21) and train_recs[3]["tokens_seen"] == 4 * 4 * 16
    best = min(evals, key=lambda r: r["eval_bits_per_token"])
    found = checkpoint.latest(tmp_path / "run" / "best")
    assert found.name == f"step_{best['step']:08d}"
    state = json.loads((found / "state.json").read_text())
    assert state["best"]["eval_bits_per_token"] == best["eval_bits_per_token"]
    model = checkpoint.load(tmp_path / "run" / "best")  # the best is a loadable model
    assert model.checkpoint_path == found


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    full = train(_run(tmp_path, "full", keep_best=True, dropout=0.1))
    part = train(_run(tmp_path, "split", keep_best=True, dropout=0.1), until_step=8)  # in epoch 1 of 0..2
    assert part.name == "step_00000008"
    resumed = train(_run(tmp_path, "split", keep_best=True, dropout=0.1), resume=True)
    a, b = _weights(full), _weights(resumed)
    for kind in a:
        for k in a[kind]:
            assert torch.equal(a[kind][k], b[kind][k]), (kind, k)
    strip = [
        [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in _log(tmp_path / d)]
        for d in ("full", "split")
    ]
    split_unique = [r for i, r in enumerate(strip[1]) if r not in strip[1][:i]]  # step 8 is logged twice
    assert strip[0] == split_unique
    best = [checkpoint.latest(tmp_path / d / "best").name for d in ("full", "split")]
    assert best[0] == best[1]
    # the order is a resume field: 'auto' with epochs resolved to 'epochs'
    with pytest.raises(InvalidArgument, match="give --data-order epochs"):
        train(_run(tmp_path, "split", dropout=0.1, data_order="random", steps=20, epochs=0.0), resume=True)


def test_early_stopping_stops_after_patience_evaluations_without_a_best(tmp_path):
    # lr far below float32's resolution of the weights: every evaluation gives the same NLL, so only the
    # first (epoch 1, step 6) is a best, and patience 2 stops at the third (epoch 3, step 16) of 53 steps
    cfg = _run(tmp_path, "stop", lr=1e-30, early_stop=2, epochs=10.0, objective="autoregressive")
    last = train(cfg)
    assert last.name == "step_00000016"
    evals = [r for r in _log(tmp_path / "stop") if "eval_bits_per_token" in r]
    assert [r["step"] for r in evals] == [6, 11, 16]
    assert len({r["eval_bits_per_token"] for r in evals}) == 1
    assert checkpoint.latest(tmp_path / "stop" / "best").name == "step_00000006"
    saved = checkpoint.read_config(last)["train"]
    assert saved["steps"] == 53 and saved["epochs"] == 10.0  # the derived steps are recorded


def _toml(path: Path, cfg: dict) -> Path:
    lines = [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in cfg.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_two_processes_read_the_epochs_of_one_and_stop_together(tmp_path):
    """Two processes (gloo) against one: the same training loss at every step (so the same windows and
    noise, across epoch boundaries), the same evaluations and the same early stop (the vote)."""
    over = dict(lr=1e-30, early_stop=2, epochs=10.0, batch_size=8, grad_accum=2, dist_timeout=60.0)
    one = train(_run(tmp_path, "one", **over))
    cfg = _toml(tmp_path / "two.toml", _run(tmp_path, "two", **{**over, "grad_accum": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DDM_FAULT", None)
    cmd = torchrun_command(2, ["train", "--config", str(cfg)])
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout + p.stderr
    two = checkpoint.latest(tmp_path / "two")
    assert two.name == one.name == "step_00000008"  # evaluations at steps 3, 6, 8 (epochs 1, 2, 3)
    logs = [
        [r for r in _log(tmp_path / d) if "loss" in r or "eval_bits_per_token" in r] for d in ("one", "two")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    for a, b in zip(*logs, strict=True):
        for key in ("loss", "eval_bits_per_token", "epoch"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)


def test_the_data_constrained_bench_runs_once(tmp_path):
    """`benches/data_constrained.py` on the tiny model for 2 epochs: results, table, plot and command
    (figures not checked; each model's best is the minimum of its evaluations)."""
    pytest.importorskip("matplotlib", reason="the bench draws its plot with matplotlib (the `plot` extra)")
    tiny = ["hidden=32", "heads=2", "blocks=1", "cond_dim=16", "seq_len=16", "batch_size=4"]
    sets = [a for kv in tiny for a in ("--set-diffusion", kv, "--set-ar", kv)]
    out, runs = tmp_path / "out", tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "benches" / "data_constrained.py"), "--epochs", "2", "--data"]
    cmd += [_text(tmp_path), "--eval-every-epochs", "1", "--eval-sequences", "2", "--eval-num-t", "2"]
    cmd += ["--out", str(out), "--run-dir", str(runs), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout + p.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results["records"]] == ["diffusion", "ar"]
    for r in results["records"]:
        assert [round(e["epoch"]) for e in r["evals"]] == [1, 2]
        assert r["best"]["eval_bits_per_token"] == min(e["eval_bits_per_token"] for e in r["evals"])
        assert 0 < r["evals"][0]["elapsed_s"] <= r["evals"][1]["elapsed_s"]
    assert "Ratio of the bests" in (out / "table.md").read_text()
    assert (out / "heldout_vs_epochs.png").stat().st_size > 0
    assert "--epochs 2" in (out / "command.txt").read_text()
    (out / "table.md").unlink()
    p = subprocess.run([*cmd, "--redraw"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and (out / "table.md").is_file(), p.stderr
