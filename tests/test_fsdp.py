"""FSDP2 (`parallel = "fsdp"`, ddm.training.fsdp) on CPU with gloo: the same run as one plain process.

Tolerance. Two FSDP processes and one process train the same keyed global batches; what differs is the
order of the float32 sums: each rank sums the gradient of its 4 rows and the reduce-scatter adds the two
halves, where one process sums 8 rows (and FSDP gathers/reshards, which is exact). Reordering a sum of n
terms moves it by at most about `log2(n) * u * sum|terms|` (u = 2^-24 = 6e-8), so a gradient entry, the
loss and the clipped norm agree to a relative ~1e-7 (loss and grad_norm are checked at `rtol = 1e-5`, the
DDP test's). AdamW passes a relative gradient error into the update `lr * m / (sqrt(v) + eps)` roughly
unchanged where `|g| >> eps`; every update is at most about `lr` in size, so after `n` steps a weight moves
by at most `n * lr * delta` with `delta` the relative error of the updates. With n = 10, lr = 3e-3 and
`delta <= 3e-5` (1e-7 amplified by entries whose gradient is near the round-off floor, where Adam's
normalisation divides by a tiny `sqrt(v)`), weights, EMA and moments agree to `atol = n * lr * 3e-5 =
1e-6` plus `rtol = 1e-5`. Observed: 7e-7 (weights), 4e-7 (EMA), 1e-9 (moments) after 10 steps.

One FSDP process is the plain process bit for bit (no reduction happens: the same sums in the same
order), which is checked exactly. Dropout is 0 (its masks are not keyed per row).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ddm
import pytest
import torch
from ddm.errors import CheckpointError, InvalidArgument
from ddm.io import checkpoint, sharded
from ddm.training import train
from ddm.training.config import TrainConfig
from ddm.training.distributed import DistEnv, free_port, torchrun_command
from ddm.training.fsdp import Replicated, make_parallelism
from ddm.training.trainer import Trainer
from test_distributed import _config_file, _log, _run, _weights

STEPS, LR = 10, 3e-3
RTOL, ATOL = 1e-5, STEPS * LR * 3e-5
KW = dict(blocks=2, steps=STEPS, lr=LR, grad_accum=1, save_every=1, keep_checkpoints=20)


def _close(a, b, rtol: float, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    for kind in wa:
        assert wa[kind].keys() == wb[kind].keys()
        for k in wa[kind]:
            torch.testing.assert_close(wb[kind][k], wa[kind][k], rtol=rtol, atol=atol, msg=f"{kind} {k}")


def _same_log(ref, got, steps) -> None:
    for s in steps:
        for key in ("loss", "grad_norm"):
            assert got[s][key] == pytest.approx(ref[s][key], rel=RTOL), (s, key)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """One process, no FSDP: the reference run, a checkpoint after every step."""
    tmp = tmp_path_factory.mktemp("fsdp")
    train(_config_file(tmp, "plain", **KW))
    return tmp / "plain"


def _step(run_dir, s):
    return run_dir / "checkpoints" / f"step_{s:08d}"


@pytest.mark.parametrize(
    "optimizer,grad_ckpt,objective",
    [
        ("adamw", False, "diffusion"),
        ("muon", False, "diffusion"),
        ("adamw", True, "diffusion"),
        ("adamw", False, "autoregressive"),
    ],
)
def test_one_fsdp_process_is_the_plain_process_bit_for_bit(tmp_path, optimizer, grad_ckpt, objective):
    """Also with activation checkpointing inside the FSDP units (the same float32 operations replayed),
    and for the autoregressive baseline (its blocks are called through `forward`, not `forward_kv`)."""
    kw = {**KW, "steps": 4, "optimizer": optimizer, "lr": 1e-2, "objective": objective}
    a = train(_config_file(tmp_path, "plain", **kw))
    b = train(_config_file(tmp_path, "fsdp", **kw, parallel="fsdp", grad_checkpointing=grad_ckpt))
    _close(a, b, rtol=0, atol=0)
    la, lb = _log(tmp_path / "plain"), _log(tmp_path / "fsdp")
    assert [la[s]["loss"] for s in la] == [lb[s]["loss"] for s in lb]
    # the EMA is gathered for the evaluation at the last step on every rank; rank 0 logs it
    evals = [r for r in (tmp_path / "fsdp" / "log.jsonl").read_text().splitlines() if "eval_" in r]
    assert len(evals) == 1 and '"step": 4' in evals[0]


def test_fsdp_bad_input(tmp_path):
    cfg = TrainConfig.from_dict({**KW, "parallel": "fsdp", "batch_size": 6})
    with pytest.raises(InvalidArgument, match="parallel must be 'ddp' or 'fsdp', got 'zero'"):
        cfg.replace(parallel="zero")
    # no process group (the Trainer built by hand, outside ddm.training.train and torchrun)
    with pytest.raises(InvalidArgument, match="parallel 'fsdp' needs a process group"):
        make_parallelism(cfg, DistEnv(), torch.device("cpu"))
    assert isinstance(
        make_parallelism(cfg.replace(parallel="ddp"), DistEnv(), torch.device("cpu")), Replicated
    )
    # 4 processes do not divide a batch of 6: the Trainer says so before any collective, naming both
    with pytest.raises(
        ValueError, match=r"batch_size \(6\) must be divisible by the number of processes \(4\)"
    ):
        Trainer(cfg.replace(run_dir=str(tmp_path / "bad")), DistEnv(0, 4, 0, "gloo"), torch.device("cpu"))


def _export(path, out) -> Path:
    rc, text, _ = _run([sys.executable, "-m", "ddm", "export", str(path), str(out)])
    assert rc == 0, text
    return out


def test_fsdp_ddp_and_one_process_continue_each_other_through_kills(plain, tmp_path):
    """The chain FSDP 2 processes -> 1 process -> DDP 2 processes -> FSDP 2 processes, each leg killed
    (but the last), with sharded (DCP, asynchronous then synchronous) and plain checkpoints: every
    checkpoint is the reference run's, within the tolerance above."""
    cfg = _config_file(tmp_path, "run", **KW, parallel="fsdp", checkpoint_format="sharded", async_save=True)
    run_dir = tmp_path / "run"
    # FSDP, 2 processes, asynchronous sharded saves: rank 0 dies inside the save of step 4, after the
    # shards are written and before the manifest; step 3 stays the latest, the leftover is ignored
    rc, out, _ = _run(torchrun_command(2, ["train", "--config", str(cfg)]), fault="0:4:save")
    assert rc != 0 and "DDM_FAULT: rank 0 exits at save of step 4" in out, out
    assert checkpoint.latest(run_dir).name == "step_00000003"
    assert list((run_dir / "checkpoints").glob(".tmp-step_00000004-*"))
    three = _step(run_dir, 3)
    shards = sorted(p.name for p in (three / sharded.SHARDS).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    with pytest.raises(CheckpointError, match="sharded .DCP. checkpoint: write its plain checkpoint"):
        ddm.load(three)
    _close(_step(plain, 3), _export(three, tmp_path / "three"), RTOL, ATOL)
    # a shard gone: named; resuming warns and falls back to the newest intact checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "checkpoints" / "step_00000003" / sharded.SHARDS / "__1_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"sharded/__1_0\.distcp: missing"):
        sharded.read_state(broken / "checkpoints" / "step_00000003")
    with pytest.warns(UserWarning, match=r"sharded/__1_0\.distcp: missing.*newest intact checkpoint"):
        got = train(
            _config_file(tmp_path, "broken", **KW, checkpoint_format="sharded"), resume=True, until_step=3
        )
    _close(_step(plain, 3), sharded.export(got, tmp_path / "three_again"), RTOL, ATOL)
    # one plain process reads the 2-rank shards and writes one-rank shards (synchronously)
    six = train(_config_file(tmp_path, "run", **KW, checkpoint_format="sharded"), resume=True, until_step=6)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    _close(_step(plain, 6), sharded.export(six, tmp_path / "six"), RTOL, ATOL)
    # DDP, 2 processes, plain checkpoints: rank 1 dies before step 9
    ddp = _config_file(tmp_path, "run", **KW)
    rc, out, _ = _run(torchrun_command(2, ["train", "--config", str(ddp), "--resume"]), fault="1:8")
    assert rc != 0 and "DDM_FAULT: rank 1 exits at step of step 8" in out, out
    assert checkpoint.latest(run_dir).name == "step_00000008"
    _close(_step(plain, 8), _step(run_dir, 8), RTOL, ATOL)
    # FSDP, 2 processes, plain checkpoints (gathered), to the end
    rc, out, _ = _run(
        torchrun_command(2, ["train", "--config", str(cfg), "--resume", "--checkpoint-format", "plain"])
    )
    assert rc == 0, out
    _close(_step(plain, STEPS), _step(run_dir, STEPS), RTOL, ATOL)
    _same_log(_log(plain), _log(run_dir), range(1, STEPS + 1))
    # rank 0's evaluation of the gathered EMA at the last step (the other rank joined the gathers)
    assert _eval(run_dir) == pytest.approx(_eval(plain), rel=RTOL)


def _eval(run_dir) -> float:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["eval_nats_per_token"] for r in recs if r.get("step") == STEPS and "eval_nats_per_token" in r][
        -1
    ]


def test_two_nodes_on_localhost_are_the_one_process_run(plain, tmp_path):
    """Two torchrun launches, one process each, joined by c10d rendezvous (`--nnodes 2`), as on two
    machines (docs/distributed.md): the reference run within the tolerance above."""
    cfg = _config_file(tmp_path, "nodes", **{**KW, "steps": 3}, parallel="fsdp")
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "ddm-test",
        "--rdzv_conf", "last_call_timeout=1", "--monitor_interval", "0.2",
        "-m", "ddm", "train", "--config", str(cfg),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DDM_FAULT", None)
    nodes = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=150)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    _close(_step(plain, 3), _step(tmp_path / "nodes", 3), RTOL, ATOL)
