"""Multi-process training on torch.distributed: the process group, each rank's rows, the torchrun launcher.

`ddm train` runs unchanged under `torchrun --nproc_per_node K -m ddm train ...` (or `ddm train --nproc K`,
which starts torchrun itself): each process trains a `DistributedDataParallel` copy of the model on its
slice of every global batch, with the gloo backend on CPU and nccl on CUDA, chosen from the device.

What makes a K-process run the same run as a single process is that no randomness of the training step
comes from a stateful generator: the data offsets, the times `t` and the corruption `x_t` of sequence
`j` of the global batch of step `s` are counter-based draws keyed by `(seed, stream, s, j)`
(`ddm.training.objective`), so they do not depend on which process draws them, on the number of
processes or on gradient accumulation. Rank `r` of `W` takes the contiguous rows
`[r B / W, (r + 1) B / W)` of the global batch of `B` sequences and cuts them into `grad_accum`
micro-batches; the loss of a micro-batch is `W / B` times its summed per-sequence loss, so that after
DDP's all-reduce (a mean over ranks) every rank holds the gradient of the mean loss over the global
batch, exactly what one process computes. Clipping, AdamW, the learning-rate schedule and the EMA then
act on identical gradients and weights everywhere.

The one thing not keyed per sequence is dropout (it lives inside the network and uses torch's global RNG):
its generator is reseeded per micro-batch from `(seed, step, first row)` (`objective.dropout_seed`), so a
run is reproducible and resumes exactly with the same process count and `grad_accum`; with `dropout > 0`
and another split the masks differ (same law, different draws). With `dropout = 0` the runs agree up to
float32 summation order.

Fault injection for tests (`DDM_FAULT`, `maybe_fail`) lives in `ddm._faults`; it is re-exported here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ddm._device import resolve_device
from ddm._faults import maybe_fail

# The keyed draws and the loss moved to ddm.training.objective; re-exported for callers outside training.
from ddm.sampling.sampler import native_available  # noqa: F401
from ddm.training.objective import (  # noqa: F401
    STREAM_TRAIN_CORRUPT,
    STREAM_TRAIN_DROPOUT,
    STREAM_TRAIN_TIME,
    STREAM_TRAIN_TIME_STRATA,
    dropout_seed,
    keyed_block_times,
    keyed_loss,
    keyed_mask_draws,
    keyed_times,
)

__all__ = [
    "DistEnv",
    "backend_for",
    "batch_rows",
    "free_port",
    "init",
    "launch",
    "launched_by_torchrun",
    "maybe_fail",
    "torchrun_command",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job.

    Attributes:
        rank: global rank in `[0, world_size)`.
        world_size: number of processes (1: no process group).
        local_rank: rank on this machine (selects `cuda:local_rank`).
        backend: `"gloo"`, `"nccl"`, or None for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is in use (more than one process)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Waits for every rank (no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """The sums over ranks of a few floats (float64; identity in a single process)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def shutdown(self) -> None:
        """Destroys the process group (no-op in a single process without one)."""
        if self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """True when the process was started by torchrun (it sets `RANK` and `WORLD_SIZE`)."""
    return _env_int("WORLD_SIZE") is not None and _env_int("RANK") is not None


def backend_for(device: torch.device) -> str:
    """The collective backend for a device: nccl on CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(device_name: str, timeout_s: float, *, group: bool = False) -> tuple[DistEnv, torch.device]:
    """Joins the process group torchrun set up (if any) and picks this process's device.

    Args:
        device_name: the config's device: `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"` (with several
            processes on CUDA, each takes `cuda:LOCAL_RANK`, so `"cuda:N"` is refused).
        timeout_s: timeout of every collective: if a rank dies, the others fail after this long at most
            instead of hanging (torchrun usually stops them sooner).
        group: set up a process group even for a single process (a one-rank group on an in-memory
            store, no rendezvous): FSDP's DTensors need one.

    Returns:
        `(env, device)`.
    """
    if not timeout_s > 0:
        raise ValueError(f"dist_timeout must be > 0 seconds, got {timeout_s!r}")
    world = _env_int("WORLD_SIZE") if launched_by_torchrun() else None
    if world is None or world <= 1:
        device = resolve_device(device_name)
        if not group:
            return DistEnv(), device
        backend = backend_for(device)
        if not dist.is_initialized():
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=timeout_s)
            )
        return DistEnv(0, 1, 0, backend), device
    rank = _env_int("RANK") or 0
    local_rank = _env_int("LOCAL_RANK") or 0
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"device {device_name!r} with {world} processes: give 'cuda' or 'auto'; each process "
                "uses cuda:LOCAL_RANK"
            )
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA devices: "
                "start at most that many processes per machine (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = backend_for(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(
            f"process group has rank {dist.get_rank()} of {dist.get_world_size()}, the environment says "
            f"{rank} of {world}"
        )
    return DistEnv(rank, world, local_rank, backend), device


def batch_rows(batch_size: int, grad_accum: int, env: DistEnv) -> list[torch.Tensor]:
    """The global-batch rows this rank computes, one int64 tensor per micro-batch.

    Rank `r` of `W` takes rows `[r B / W, (r + 1) B / W)` of the `B = batch_size` rows of a step, in
    `grad_accum` consecutive micro-batches.

    Raises:
        ValueError: if `batch_size` is not divisible by `world_size * grad_accum`.
    """
    parts = env.world_size * grad_accum
    if batch_size % parts:
        raise ValueError(
            f"batch_size ({batch_size}) must be divisible by the number of processes ({env.world_size}) "
            f"x grad_accum ({grad_accum}) = {parts}"
        )
    micro = batch_size // parts
    start = env.rank * (batch_size // env.world_size)
    return [torch.arange(start + k * micro, start + (k + 1) * micro) for k in range(grad_accum)]


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(nproc: int, ddm_args: Sequence[str], *, port: int | None = None) -> list[str]:
    """The command that runs `ddm <ddm_args>` in `nproc` processes on this machine through torchrun.

    Args:
        nproc: processes on this machine.
        ddm_args: the `ddm` arguments, e.g. `["train", "--config", "x.toml"]`.
        port: rendezvous port on localhost (default: a free one).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port if port is not None else free_port()),
        "-m",
        "ddm",
        *ddm_args,
    ]


def launch(nproc: int, ddm_args: Sequence[str]) -> int:
    """Runs `ddm <ddm_args>` in `nproc` local processes under torchrun; returns its exit status."""
    return subprocess.run(torchrun_command(nproc, ddm_args), check=False).returncode
