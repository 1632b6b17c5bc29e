"""Multi-process training on torch.distributed: process group, keyed randomness, the torchrun launcher.

`ddm train` runs unchanged under `torchrun --nproc_per_node K -m ddm train ...` (or `ddm train --nproc K`,
which starts torchrun itself): each process trains a `DistributedDataParallel` copy of the model on its
slice of every global batch, with the gloo backend on CPU and nccl on CUDA, chosen from the device.

What makes a K-process run the same run as a single process is that no randomness of the training step
comes from a stateful generator. The data offsets, the times `t` and the corruption `x_t` of sequence
`j` of the global batch of step `s` are counter-based draws keyed by `(seed, stream, s, j)` (and the
position, for `x_t`), so they do not depend on which process draws them, on the number of processes or
on gradient accumulation. Rank `r` of `W` takes the contiguous rows `[r B / W, (r + 1) B / W)` of the
global batch of `B` sequences and cuts them into `grad_accum` micro-batches; the loss of a micro-batch is
`W / B` times its summed per-sequence loss, so that after DDP's all-reduce (a mean over ranks) every rank
holds the gradient of the mean loss over the global batch, exactly what one process computes. Clipping,
AdamW, the learning-rate schedule and the EMA then act on identical gradients and weights everywhere.

The one thing not keyed per sequence is dropout (it lives inside the network and uses torch's global RNG):
its generator is reseeded per micro-batch from `(seed, step, first row)`, so a run is reproducible and
resumes exactly with the same process count and `grad_accum`; with `dropout > 0` and another split the
masks differ (same law, different draws). With `dropout = 0` the runs agree up to float32 summation order.

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

from ddm import _rng
from ddm._device import resolve_device
from ddm._faults import maybe_fail
from ddm.data.corpus import keyed_offsets
from ddm.losses import block_loss as block_loss_fn
from ddm.losses import dwdse, mask_count_times, mask_counts, masked_nelbo
from ddm.sampling.sampler import native_available
from ddm.schedules import Schedule

__all__ = [
    "DistEnv",
    "backend_for",
    "batch_rows",
    "dropout_seed",
    "free_port",
    "init",
    "keyed_block_times",
    "keyed_loss",
    "keyed_times",
    "keyed_offsets",
    "launched_by_torchrun",
    "maybe_fail",
    "torchrun_command",
]

# Stream tags of the training randomness (distinct from the sampler's STREAM_* in ddm._rng; the data
# offsets' STREAM_TRAIN_DATA = 0x5EED0101 is in ddm.data.corpus).
STREAM_TRAIN_TIME = 0x5EED0102
STREAM_TRAIN_CORRUPT = 0x5EED0103
STREAM_TRAIN_DROPOUT = 0x5EED0104
STREAM_TRAIN_TIME_STRATA = 0x5EED0105
_U64 = (1 << 64) - 1


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
        """Destroys the process group (no-op in a single process)."""
        if self.enabled and dist.is_initialized():
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


def init(device_name: str, timeout_s: float) -> tuple[DistEnv, torch.device]:
    """Joins the process group torchrun set up (if any) and picks this process's device.

    Args:
        device_name: the config's device: `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"` (with several
            processes on CUDA, each takes `cuda:LOCAL_RANK`, so `"cuda:N"` is refused).
        timeout_s: timeout of every collective: if a rank dies, the others fail after this long at most
            instead of hanging (torchrun usually stops them sooner).

    Returns:
        `(env, device)`.
    """
    if not timeout_s > 0:
        raise ValueError(f"dist_timeout must be > 0 seconds, got {timeout_s!r}")
    world = _env_int("WORLD_SIZE") if launched_by_torchrun() else None
    if world is None or world <= 1:
        return DistEnv(), resolve_device(device_name)
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


def dropout_seed(seed: int, step: int, first_row: int) -> int:
    """A 53-bit seed for torch's global RNG (dropout) of the micro-batch starting at `first_row`."""
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_DROPOUT, step, torch.tensor([first_row]), 1)
    return int(u.item() * 9007199254740992.0)


def keyed_times(
    seed: int,
    step: int,
    rows: torch.Tensor,
    eps_t: float,
    *,
    t_sampling: str = "uniform",
    batch_size: int = 0,
) -> torch.Tensor:
    """The training times `t` of the rows `rows` of a step's global batch, `[b]` float64 in `[eps_t, 1]`.

    `"uniform"`: `t ~ U[eps_t, 1]` from the uniform keyed by `(seed, step, row)`. `"stratified"`: one
    offset `u0` keyed by `(seed, step)` and `t_j = eps_t + (1 - eps_t) frac(u0 + j / batch_size)` for
    global row `j`, so the batch holds one time in each of its `batch_size` strata (MDLM's low-discrepancy
    sampler, Sahoo et al. 2024); each `t_j` is still uniform, so the loss stays unbiased, and the rows of
    a process do not depend on how the batch is split.
    """
    seed &= _U64
    if t_sampling == "uniform":
        u_t = _rng.uniforms(seed, STREAM_TRAIN_TIME, step, rows, 1)[:, 0]  # (b,) float64
    elif t_sampling == "stratified":
        if batch_size <= 0:
            raise ValueError("stratified times need the global batch_size")
        zero = torch.zeros(1, dtype=torch.int64, device=rows.device)
        u0 = _rng.uniforms(seed, STREAM_TRAIN_TIME_STRATA, step, zero, 1)[0, 0]  # one offset per step
        u_t = torch.frac(u0 + rows.to(torch.float64) / batch_size)  # (b,)
    else:
        raise ValueError(f"t_sampling must be 'uniform' or 'stratified', got {t_sampling!r}")
    return eps_t + (1.0 - eps_t) * u_t


def keyed_block_times(
    seed: int,
    step: int,
    rows: torch.Tensor,
    eps_t: float,
    blocks: int,
    *,
    t_sampling: str = "uniform",
    batch_size: int = 0,
) -> torch.Tensor:
    """The times of the blocks of the rows `rows`, `[b, blocks]` float64: block k of row j is keyed by
    `(seed, step, j, k)`, and `"stratified"` spreads the `batch_size * blocks` times of a step over as many
    strata. Block 0 gets the time `keyed_times` gives the row (so one block is the ordinary objective)."""
    seed &= _U64
    if t_sampling == "uniform":
        u_t = _rng.uniforms(seed, STREAM_TRAIN_TIME, step, rows, blocks)  # (b, blocks)
    elif t_sampling == "stratified":
        if batch_size <= 0:
            raise ValueError("stratified times need the global batch_size")
        zero = torch.zeros(1, dtype=torch.int64, device=rows.device)
        u0 = _rng.uniforms(seed, STREAM_TRAIN_TIME_STRATA, step, zero, 1)[0, 0]
        k = torch.arange(blocks, device=rows.device, dtype=torch.float64)
        u_t = torch.frac(u0 + (rows.to(torch.float64)[:, None] * blocks + k) / (batch_size * blocks))
    else:
        raise ValueError(f"t_sampling must be 'uniform' or 'stratified', got {t_sampling!r}")
    return eps_t + (1.0 - eps_t) * u_t


def keyed_mask_draws(
    seed: int, step: int, rows: torch.Tensor, length: int, schedule: Any, *, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masks design's training draws for the rows `rows` of a step's global batch (`t_sampling =
    "masks"`, the absorbing graph; docs/math.md section 4.6): `(t [b], masked [b, L], weight [b])`, float64,
    bool, float64.

    Row j's masked count is `c ~ q` (`ddm.losses.mask_counts`) by inverse CDF at `frac(u0 + j /
    batch_size)`, one offset `u0` keyed by `(seed, step)`, so a step's batch spreads its counts over the
    strata of q whatever the process split. Its positions get the corruption uniforms keyed by `(seed,
    step, j)`; the c smallest are masked, and the c-th smallest is `m ~ Beta(c, L - c + 1)`, independent of
    which positions they are. `t = m^{-1}(m)` and the weight `pi / q` come from
    `ddm.losses.mask_count_times`: `weight * f(t, x_t)` is an unbiased estimate of the integral of the
    loss over `t in [0, 1]`, with no heavy tail (the `1 / t` of a rare mask at small t cancels).
    """
    if batch_size <= 0:
        raise ValueError("t_sampling='masks' needs the global batch_size")
    if type(schedule).time_of is Schedule.time_of:
        raise ValueError("t_sampling='masks' needs a schedule with time_of (LogLinear, Geometric)")
    seed &= _U64
    rows = rows.to(torch.int64)
    zero = torch.zeros(1, dtype=torch.int64, device=rows.device)
    u0 = _rng.uniforms(seed, STREAM_TRAIN_TIME_STRATA, step, zero, 1)[0, 0].cpu()
    v = torch.frac(u0 + rows.cpu().to(torch.float64) / batch_size)  # (b,)
    count, s_n = mask_counts(v, torch.tensor(length), length)  # (b,) in 1..L, S(L)
    u = _rng.uniforms(seed, STREAM_TRAIN_CORRUPT, step, rows, length).cpu()  # (b, L) float64
    m = u.sort(dim=-1).values.gather(-1, (count - 1)[:, None])[:, 0]  # (b,) the c-th smallest
    masked = u <= m[:, None]  # (b, L): exactly c positions
    t, weight = mask_count_times(schedule, m, count, s_n)
    return t, masked, weight


def keyed_loss(
    log_fn: Any,
    graph: Any,
    schedule: Any,
    x0: torch.Tensor,
    *,
    seed: int,
    step: int,
    rows: torch.Tensor,
    eps_t: float,
    objective: str = "diffusion",
    t_sampling: str = "uniform",
    batch_size: int = 0,
    block_size: int = 0,
    block_loss: str = "masked",
) -> torch.Tensor:
    """Per-sequence training loss with keyed noise: `ddm.losses.dwdse` (objective `"diffusion"`, SEDD
    eq. 10) or `ddm.losses.masked_nelbo` (`"masked"`, `log_fn` then gives `log p(x0 | x_t)`).

    The times come from `keyed_times` and the uniforms of the corruption `x_t ~ p_{t|0}(. | x0)` of row
    `rows[b]` from counter-based uniforms keyed by `(seed, step, rows[b])` (and the position), so a
    sequence gets the same noise whatever batch, process or micro-batch it is computed in.

    Args:
        log_fn: `f(x_t: int64 [b, L], sigma_bar: [b])`: `[b, L, dim]` log-scores, or `[b, L, N]`
            log-probabilities for the masked objective.
        graph: the forward graph (`Absorbing` or `Uniform`).
        schedule: the noise schedule.
        x0: int64 clean tokens `[b, L]`.
        seed: the run's seed.
        step: the optimizer step (the key's counter).
        rows: int64 `[b]` global row indices of the sequences in the step's batch.
        eps_t: lower end of the time range, in `[0, 1)`.
        objective: `"diffusion"` or `"masked"`.
        t_sampling: `"uniform"` or `"stratified"` (`keyed_times`), or `"masks"` (the absorbing graph:
            masked counts and times from `keyed_mask_draws`, each row's loss times its importance weight).
        batch_size: the global batch size (for stratified times and masks).
        block_size: objective `"block"`: `B'`; `log_fn(x_t, sigma_bar [b, L], x0)` then scores every
            block given the clean ones before it, and each block has its own keyed time
            (`keyed_block_times`; `ddm.losses.block_loss`).
        block_loss: objective `"block"`: `"masked"` or `"diffusion"`, the loss of each block.

    Returns:
        `[b]` loss per sequence.
    """
    length = x0.shape[1]
    rows = rows.to(device=x0.device, dtype=torch.int64)
    if objective == "block":
        nb = -(-length // block_size)
        t = keyed_block_times(seed, step, rows, eps_t, nb, t_sampling=t_sampling, batch_size=batch_size)
        u = _rng.uniforms(seed & _U64, STREAM_TRAIN_CORRUPT, step, rows, length)  # (b, L) float64
        return block_loss_fn(
            log_fn, graph, schedule, x0, block_size, loss=block_loss, t=t.to(torch.get_default_dtype()),
            eps_t=eps_t, u=u,
        )  # fmt: skip
    loss = {"diffusion": dwdse, "masked": masked_nelbo}[objective]
    if t_sampling == "masks":
        mask_id = getattr(graph, "mask_id", None)
        if mask_id is None:
            raise ValueError(f"t_sampling='masks' needs the absorbing graph, got {graph!r}")
        t, masked, weight = keyed_mask_draws(seed, step, rows, length, schedule, batch_size=batch_size)
        x_t = torch.where(masked.to(x0.device), torch.full_like(x0, mask_id), x0)
        t = t.to(device=x0.device, dtype=torch.get_default_dtype())
        f = loss(log_fn, graph, schedule, x0, t=t, eps_t=eps_t, x_t=x_t)  # (b,) the integrand at (t, x_t)
        return weight.to(device=f.device, dtype=f.dtype) * f
    t = keyed_times(seed, step, rows, eps_t, t_sampling=t_sampling, batch_size=batch_size)
    t = t.to(torch.get_default_dtype())  # (b,)
    first = int(rows[0]) if len(rows) else 0
    contiguous = bool(torch.equal(rows, torch.arange(first, first + len(rows), device=rows.device)))
    if x0.device.type == "cpu" and contiguous and len(rows) and native_available():
        # the Rust twin of the corruption below, bit-identical for the same key (tests/test_parity.py);
        # imported here because the compiled core may be absent (then the torch path runs)
        from ddm.sampling import _native

        sigma_bar = schedule.total_noise(t).detach().to(torch.float64).contiguous()  # (b,)
        x_t = _native.corrupt(
            graph, x0.contiguous(), sigma_bar, seed & _U64, step, first, stream=STREAM_TRAIN_CORRUPT
        )
        return loss(log_fn, graph, schedule, x0, t=t, eps_t=eps_t, x_t=x_t)
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_CORRUPT, step, rows, length)  # (b, L) float64
    return loss(log_fn, graph, schedule, x0, t=t, eps_t=eps_t, u=u)


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
