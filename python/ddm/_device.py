"""Devices: one rule for every entry point, and a memory estimate checked before the first step.

The rule: `"auto"` (the default everywhere) is CUDA when available, else the CPU; `"cuda"` or `"cuda:N"`
on a machine without that GPU is an `InvalidArgument`, never a torch traceback.

`estimate_bytes` is the one memory estimate of a transformer forward (and backward) pass, and
`check_memory` refuses a run whose estimate exceeds the memory available on its device, naming both
figures, so that a huge `--seq-len` is an error message instead of a process killed by the kernel.
"""

from __future__ import annotations

import os

import torch

from ddm.errors import InvalidArgument

__all__ = ["available_bytes", "check_memory", "estimate_bytes", "format_bytes", "resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` (or None) -> CUDA when available, else CPU; anything else as given, checked.

    Raises:
        InvalidArgument: an unknown device name, or a CUDA device this machine does not have.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise InvalidArgument(
            f"device {name!r} is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N' ({e})"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgument(
                f"device {str(name)!r} was asked for but CUDA is not available on this machine: "
                "use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidArgument(
                f"device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def estimate_bytes(
    *,
    batch: int,
    seq_len: int,
    hidden: int,
    heads: int,
    blocks: int,
    vocab: int,
    mlp_ratio: int = 4,
    training: bool = False,
    bytes_per_value: int = 4,
) -> int:
    """Estimated peak memory, in bytes, of one pass of a transformer on `batch` sequences of `seq_len`.

    Counted: the attention scores (`heads * seq_len^2` per sequence and layer), the activations of a
    block (`seq_len * hidden * (8 + 2 * mlp_ratio)` per sequence), and the output logits (`seq_len * vocab`
    per sequence). Without gradients only one block is live
    at a time; in training every block keeps its activations for the backward pass, and the weights, their
    gradients and two Adam moments are added (`12 * blocks * hidden^2 + 2 * vocab * hidden` weights).
    A lower estimate: a run that needs more than this does not fit.

    Args:
        batch: sequences per network call.
        seq_len: tokens per sequence.
        hidden: width of the residual stream.
        heads: attention heads.
        blocks: transformer blocks.
        vocab: size of the output (the vocabulary, with MASK if any).
        mlp_ratio: MLP width over `hidden`.
        training: count what the backward pass keeps, and the optimizer.
        bytes_per_value: 4 for float32.

    Returns:
        The estimate in bytes.
    """
    for name, value in (("batch", batch), ("seq_len", seq_len), ("hidden", hidden), ("heads", heads)):
        if value <= 0:
            raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
    attention = heads * seq_len * seq_len  # the scores, per sequence and layer
    activations = seq_len * hidden * (8 + 2 * mlp_ratio)  # per sequence and layer
    logits = seq_len * vocab  # per sequence
    layers = blocks if training else 1
    values = batch * (layers * (attention + activations) + logits)
    if training:
        values += 4 * (12 * blocks * hidden * hidden + 2 * vocab * hidden)
    return values * bytes_per_value


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device` in bytes (CUDA: `mem_get_info`; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (platforms without sysconf)
        return None


def format_bytes(n: float) -> str:
    """`n` bytes as `"1.5 GB"` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def check_memory(need: int, device: torch.device, what: str, advice: str) -> None:
    """Refuses a run that needs `need` bytes when `device` has less available.

    Args:
        need: the estimate (`estimate_bytes`).
        device: where the run computes.
        what: the run, for the message (e.g. `"ddm eval on 64 blocks of 100000 tokens"`).
        advice: what to lower (e.g. `"lower --seq-len or --batch-size"`).

    Raises:
        InvalidArgument: the estimate exceeds the available memory (both figures named).
    """
    free = available_bytes(device)
    if free is not None and need > free:
        raise InvalidArgument(
            f"{what} needs about {format_bytes(need)} of memory, but {device} has {format_bytes(free)} "
            f"available: {advice}"
        )
