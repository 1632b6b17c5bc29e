"""Type stubs for the compiled Rust core `ddm._core` (rust/src/python.rs). Use `ddm.sampling._native`.

Arrays are NumPy, C-contiguous and of the exact dtypes shown (nothing is cast): tokens int64 `[B, L]`,
log-scores float32 `[B, L, dim]`, noise levels float64 `[B]`. Results are int64 `[B, L]`, written into
`out` when given (and `out` returned). TypeError: wrong type or dtype; ValueError: wrong rank, shape or
layout, token out of range, NaN / infinite log-score in a row that is read, negative or non-finite noise
level, `vocab_size < 1`, an integer argument out of [0, 2**64), a `kind` other than "euler", "analytic"
or "denoise", a `graph` other than "absorbing" or "uniform" (never a fallback to another kernel), a jump
probability outside [0, 1], a `stream` outside [0, 2**32). `reverse_step`'s `level`
is `rate_dt` (euler), `dsigma` (analytic) or `sigma` (denoise); `corrupt`'s `p_move` is 1 - e^{-sigma}.
"""

import numpy as np
import numpy.typing as npt

__all__ = ["__version__", "corrupt", "reverse_step", "proposal_step", "propose"]

__version__: str

def corrupt(
    x: npt.NDArray[np.int64],
    p_move: npt.NDArray[np.float64],
    graph: str,
    vocab_size: int,
    seed: int,
    stream: int,
    step: int | None = None,
    seq_offset: int | None = None,
    out: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]: ...
def reverse_step(
    kind: str,
    x: npt.NDArray[np.int64],
    log_score: npt.NDArray[np.float32],
    level: npt.NDArray[np.float64],
    graph: str,
    vocab_size: int,
    seed: int,
    step: int,
    seq_offset: int | None = None,
    out: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]: ...
def proposal_step(
    kind: str,
    x: npt.NDArray[np.int64],
    log_score: npt.NDArray[np.float32],
    level: npt.NDArray[np.float64],
    graph: str,
    vocab_size: int,
    seed: int,
    step: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seq_offset: int | None = None,
    out: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]: ...
def propose(
    x: npt.NDArray[np.int64],
    log_score: npt.NDArray[np.float32],
    graph: str,
    vocab_size: int,
    seed: int,
    step: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seq_offset: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
