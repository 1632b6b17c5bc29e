"""Counter-based uniforms in plain torch integer ops, keyed by (seed, stream, step, sequence, position).

The torch sampling path needs randomness that, like the Rust kernels' (docs/math.md section 6), depends
only on a key and not on the batch size, the device or the order of work: sequence `i` of a batch must come
out the same whatever the batch it is drawn in. A stateful `torch.Generator` cannot give that, so the
uniforms are a hash of the key.

The hash is Chris Wellons' `lowbias32` finaliser (from his "hash prospector" search) run as two
independent 32-bit lanes, so the key is mixed into 64 bits of state. Every intermediate value is kept in
`[0, 2^32)` inside int64 tensors, and the 32-bit multiplications are split into 16-bit halves so that no
product exceeds 2^48: no signed overflow, no sign-extending shifts, identical results on CPU and CUDA.
The two lanes give 21 + 32 = 53 random bits, one float64 uniform in `[0, 1)` per key.

These uniforms are not the Rust kernels' stream (that lives in `rust/src/rng.rs`); the two backends draw
from the same law, not the same bits.
"""

from __future__ import annotations

from typing import TypeVar

import torch

__all__ = ["STREAMS", "mix32", "uniforms", "STREAM_STEP", "STREAM_LIMIT", "STREAM_FORWARD"]

_M32 = 0xFFFFFFFF
_M16 = 0xFFFF
# The one table of stream tags: each separates one use of a seed from every other, so two uses never
# draw the same uniforms. Every user reads its tag from here (tests/test_rng_streams.py checks that the
# tags are distinct 32-bit words). The Rust core keys its reverse steps by the step domain, not a tag.
STREAMS: dict[str, int] = {
    "step": 0x5EED0001,  # a torch reverse step (Sampler.step)
    "limit": 0x5EED0002,  # the draw from the uniform graph's limit law (Sampler.init_noise)
    "forward": 0x5EED0003,  # the forward corruption of Sampler.add_noise
    "unmask_time": 0x5EED0014,  # first hitting: each position's unmasking time
    "masked_token": 0x5EED0015,  # the token drawn at a MASK (first hitting, confidence, ReMDM)
    "confidence_order": 0x5EED0016,  # confidence with order="random": the ranking keys
    "remask_unmask": 0x5EED0017,  # ReMDM: whether a MASK unmasks
    "remask_remask": 0x5EED0018,  # ReMDM: whether a token is masked again
    "train_data": 0x5EED0101,  # training: the keyed data offsets (ddm.data.corpus)
    "train_time": 0x5EED0102,  # training: the keyed noise times
    "train_corrupt": 0x5EED0103,  # training: the keyed forward corruption
    "train_dropout": 0x5EED0104,  # training: the keyed dropout seed
    "train_time_strata": 0x5EED0105,  # training: the stratified times' offset
    "train_length": 0x5EED0106,  # pretraining: the steps cut to a random length (keyed_length)
    "train_epoch_order": 0x5EED01E0,  # training by epochs: each epoch's permutation of the windows
    "train_epoch_phase": 0x5EED01E1,  # training by epochs: each epoch's starting phase
    "distill_time": 0x5EED0201,  # distillation (SDTT): the keyed times
    "distill_corrupt": 0x5EED0202,  # distillation: the keyed forward corruption of the data
    "distill_teacher_step": 0x5EED0203,  # distillation: the teacher's first step draw
    "train_label_drop": 0x5EED0107,  # training: whether a row's class label is dropped
}
STREAM_STEP = STREAMS["step"]
STREAM_LIMIT = STREAMS["limit"]
STREAM_FORWARD = STREAMS["forward"]
# Lane constants (odd 32-bit numbers from the fractional parts of sqrt(2) and sqrt(3)).
_LANE_A = 0x6A09E667
_LANE_B = 0xBB67AE85

T = TypeVar("T", int, torch.Tensor)


def _mul32(x: T, c: int) -> T:
    """`(x * c) mod 2^32` for `0 <= x, c < 2^32`, with every partial product below 2^48."""
    lo = x & _M16
    hi = x >> 16
    return ((((hi * c) & _M16) << 16) + lo * c) & _M32


def mix32(x: T) -> T:
    """Wellons' `lowbias32` finaliser: a bijection of `[0, 2^32)` with full avalanche (int or tensor)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(state: tuple[T, T], word: T) -> tuple[T, T]:
    """Mix one 32-bit key word into both lanes (the lanes see the word through different constants)."""
    a, b = state
    return mix32(a ^ word), mix32(b ^ ((word + _LANE_B) & _M32))


def uniforms(
    seed: int, stream: int, step: int, seq: torch.Tensor, length: int, *, device: torch.device | None = None
) -> torch.Tensor:
    """Float64 uniforms in `[0, 1)` keyed by `(seed, stream, step, seq[b], position)`.

    Args:
        seed: a non-negative integer below 2^64.
        stream: the stream tag (a value of `STREAMS`).
        step: the step index (any non-negative integer below 2^64; all 64 bits are keyed).
        seq: int64 sequence indices, `[B]` (the batch row plus any offset), non-negative; all 64 bits
            are keyed.
        length: the number of positions `L`.
        device: device of the result (that of `seq` when None).

    Returns:
        `[B, L]` float64 tensor; entry `[b, i]` depends only on `(seed, stream, step, seq[b], i)`.
    """
    device = seq.device if device is None else torch.device(device)
    # the scalar part of the key is mixed in Python ints, with the same function
    state: tuple[int, int] = (mix32(_LANE_A ^ (seed & _M32)), mix32(_LANE_B ^ ((seed >> 32) & _M32)))
    state = _absorb(state, (seed >> 32) & _M32)
    state = _absorb(state, seed & _M32)
    state = _absorb(state, stream & _M32)
    # the step and the sequence index are keyed with all 64 bits, high word first, as in the Rust kernels
    state = _absorb(state, (step >> 32) & _M32)
    state = _absorb(state, step & _M32)
    rows = seq.to(device=device, dtype=torch.int64)[:, None]  # (B, 1)
    a, b = _absorb((torch.full_like(rows, state[0]), torch.full_like(rows, state[1])), (rows >> 32) & _M32)
    a, b = _absorb((a, b), rows & _M32)
    pos = torch.arange(length, device=device, dtype=torch.int64)[None, :]  # (1, L)
    a, b = _absorb((a, b), pos)  # (B, L) each
    a = mix32(a ^ b)  # cross the lanes once more so each output word depends on all 64 bits of state
    b = mix32(b ^ _LANE_A)
    bits = (a >> 11) * 4294967296 + b  # 21 + 32 = 53 bits, < 2^53
    return bits.to(torch.float64) * (1.0 / 9007199254740992.0)  # / 2^53
