"""Multi-process training (torchrun, DDP, gloo on CPU): the same run as one process, clean failures, resume.

Two processes and one process train the same global batches (keyed by seed, step and row), so they must
give the same losses and weights up to float32 summation order: losses and gradient norms agree to
`rtol = 1e-5`, weights, EMA weights and Adam moments to `rtol = 1e-5, atol = 1e-6` (the 2-process and
1-process runs also use different `grad_accum`, so the split of the batch differs three ways). Dropout is
0: dropout masks are not keyed per row (see ddm.training.distributed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.io import checkpoint
from ddm.schedules import Geometric, LogLinear
from ddm.training import train
from ddm.training.distributed import DistEnv, batch_rows, torchrun_command
from ddm.training.objective import keyed_loss
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6
FILES = ("config.json", "state.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors")

BASE = dict(
    hidden=32,
    heads=2,
    blocks=1,
    cond_dim=16,
    seq_len=16,
    batch_size=8,
    steps=6,
    warmup_steps=3,
    lr=3e-3,
    grad_clip=0.05,  # small enough that clipping acts at every step (checked below)
    log_every=1,
    eval_every=0,
    eval_sequences=2,
    eval_num_t=2,
    save_every=1,
    keep_checkpoints=10,
    progress=False,
    plot=False,
    dropout=0.0,
    dist_timeout=60.0,
)


def _config_file(tmp_path: Path, name: str, **kw) -> Path:
    cfg = {**BASE, "run_dir": str(tmp_path / name), **kw}
    lines = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        else:
            lines.append(f"{k} = {v!r}")
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(cmd: list[str], fault: str | None = None, timeout: float = 150.0) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k != "DDM_FAULT"}
    env["OMP_NUM_THREADS"] = "1"
    if fault is not None:
        env["DDM_FAULT"] = fault
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def _torchrun(args: list[str], fault: str | None = None) -> tuple[int, str, float]:
    return _run(torchrun_command(2, ["train", *args]), fault)


def _weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {k: load_file(str(path / f"{k}.safetensors")) for k in ("model", "ema", "optimizer")}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    for kind in wa:
        assert wa[kind].keys() == wb[kind].keys()
        for k in wa[kind]:
            torch.testing.assert_close(wb[kind][k], wa[kind][k], rtol=RTOL, atol=ATOL, msg=f"{kind} {k}")
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    assert sa["step"] == sb["step"] and sa["ema_num_updates"] == sb["ema_num_updates"]
    assert sa["tokens_seen"] == sb["tokens_seen"]


def _log(run_dir: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    steps = [r["step"] for r in train_recs]
    assert steps == sorted(set(steps)), steps  # each step logged once
    return {r["step"]: r for r in train_recs}


def _assert_same_log(ref: dict[int, dict], got: dict[int, dict], steps) -> None:
    for s in steps:
        assert got[s]["lr"] == ref[s]["lr"], s
        for key in ("loss", "grad_norm"):
            assert got[s][key] == pytest.approx(ref[s][key], rel=RTOL), (s, key)


def _assert_clean(run_dir: Path, latest_step: int) -> None:
    """LATEST names a complete checkpoint; every step_* directory is complete (no half-written one)."""
    found = checkpoint.latest(run_dir)
    assert found is not None and found.name == f"step_{latest_step:08d}"
    for d in (run_dir / "checkpoints").glob("step_*"):
        assert all((d / f).is_file() for f in FILES), d
        assert int(d.name[5:]) <= latest_step


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, grad_accum = 2, 6 steps with a checkpoint after each."""
    tmp = tmp_path_factory.mktemp("dist")
    train(_config_file(tmp, "ref", grad_accum=2))
    run_dir = tmp / "ref"
    log = _log(run_dir)
    assert all(log[s]["grad_norm"] > BASE["grad_clip"] for s in log)  # clipping was active
    return run_dir


def test_batch_rows_cover_the_global_batch_once():
    for world, accum in ((1, 1), (2, 1), (2, 2), (4, 2)):
        rows = [r for rank in range(world) for r in batch_rows(16, accum, DistEnv(rank, world))]
        assert len(rows) == world * accum and all(len(r) == 16 // (world * accum) for r in rows)
        assert torch.equal(torch.cat(rows), torch.arange(16))
    with pytest.raises(ValueError, match=r"batch_size \(12\) .* processes \(2\) x grad_accum \(4\) = 8"):
        batch_rows(12, 4, DistEnv(0, 2))


@pytest.mark.parametrize("graph,schedule", [(Absorbing(5), LogLinear()), (Uniform(5), Geometric())])
def test_keyed_noise_does_not_depend_on_the_split(graph, schedule):
    x0 = torch.randint(0, 5, (6, 7), generator=torch.Generator().manual_seed(0))
    seen = []

    def fn(x_t, sigma_bar):
        seen.append((x_t, sigma_bar))
        return torch.zeros(*x_t.shape, graph.dim)

    whole = keyed_loss(fn, graph, schedule, x0, seed=3, step=9, rows=torch.arange(6), eps_t=1e-3)
    parts = [
        keyed_loss(fn, graph, schedule, x0[i:j], seed=3, step=9, rows=torch.arange(i, j), eps_t=1e-3)
        for i, j in ((0, 1), (1, 4), (4, 6))
    ]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([s[0] for s in seen[1:]]), seen[0][0], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([s[1] for s in seen[1:]]), seen[0][1], rtol=0, atol=0)
    assert (seen[0][0] != x0).any() and (seen[0][0] == x0).any()  # some positions corrupted, some not
    keyed_loss(fn, graph, schedule, x0, seed=3, step=10, rows=torch.arange(6), eps_t=1e-3)
    assert not torch.equal(seen[-1][1], seen[0][1])  # another step, other times


def test_two_processes_match_one_and_resume_with_one(reference, tmp_path):
    cfg = _config_file(tmp_path, "two", grad_accum=2)
    rc, out, _ = _torchrun(["--config", str(cfg), "--until-step", "4"])
    assert rc == 0, out
    run_dir = tmp_path / "two"
    two = checkpoint.latest(run_dir)
    assert two.name == "step_00000004"
    ref_log = _log(reference)
    _assert_same_log(ref_log, _log(run_dir), range(1, 5))
    _assert_same_weights(reference / "checkpoints" / "step_00000004", two)
    # resume the 2-process checkpoint in 1 process (and another grad_accum): the same run continues
    done = train(_config_file(tmp_path, "two", grad_accum=1), resume=True)
    _assert_same_log(ref_log, _log(run_dir), range(1, 7))
    _assert_same_weights(reference / "checkpoints" / "step_00000006", done)


def test_a_dead_rank_fails_the_run_cleanly_and_it_resumes(reference, tmp_path):
    ref = reference / "checkpoints"
    cfg = _config_file(tmp_path, "killed", grad_accum=1)
    run_dir = tmp_path / "killed"
    # rank 1 dies before step 4 (after the checkpoint of step 3): the job must exit non-zero, not hang
    cmd = [sys.executable, "-m", "ddm", "train", "--nproc", "2", "--config", str(cfg)]
    rc, out, secs = _run(cmd, fault="1:3")
    assert rc != 0, out
    assert "DDM_FAULT: rank 1 exits at step of step 3" in out
    assert secs < BASE["dist_timeout"] + 30, secs
    _assert_clean(run_dir, 3)
    # resumed in one process (grad_accum 4) up to step 4: the run the 2 processes would have made
    four = train(_config_file(tmp_path, "killed", grad_accum=4), resume=True, until_step=4)
    _assert_same_weights(ref / "step_00000004", four)
    # that 1-process checkpoint resumed with 2 processes; rank 0 dies inside the save of step 6, after
    # writing its files: non-zero exit, LATEST still at step 5, the temporary directory left over
    rc, out, _ = _torchrun(["--config", str(cfg), "--resume"], fault="0:6:save")
    assert rc != 0, out
    assert "DDM_FAULT: rank 0 exits at save of step 6" in out
    _assert_clean(run_dir, 5)
    assert list((run_dir / "checkpoints").glob(".tmp-step_00000006-*"))  # the ignored leftover
    _assert_same_weights(ref / "step_00000005", run_dir / "checkpoints" / "step_00000005")
    # resumed in this process: it continues from step 5, cleans the leftover, ends where the reference does
    done = train(_config_file(tmp_path, "killed", grad_accum=2), resume=True)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    _assert_clean(run_dir, 6)
    _assert_same_weights(ref / "step_00000006", done)
    _assert_same_log(_log(reference), _log(run_dir), range(1, 7))
