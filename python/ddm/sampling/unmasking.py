"""The loop of the unmasking predictors (first hitting, confidence), shared by `ddm.sample` and the block
sampler (`ddm.sampling.blocks`).

From all MASK at the free positions, each call scores the rows the predictor needs (`Predictor.active`),
at the noise level it asks for, and hands the log-scores to `Predictor.step`, until `Predictor.finished`.
The rows it does not score get zero log-scores, which the predictor never reads (they have no position
to draw).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ddm.sampling.predictors import Grid, Predictor

__all__ = ["progress_bar", "run_unmasking"]


def progress_bar(total: int | None, desc: str, unit: str = "call") -> Any:
    """A tqdm bar on stderr that disappears when done (the sampler loops' progress)."""
    from tqdm.auto import tqdm  # on demand: tqdm.auto probes for a notebook when imported

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


def run_unmasking(
    predictor: Predictor,
    grid: Grid,
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    seed: int,
    ops: Any,
    progress: bool = False,
) -> tuple[torch.Tensor, int, int]:
    """Run an unmasking predictor from `x` (MASK at the free positions, the fixed tokens elsewhere).

    Args:
        predictor: the predictor (`unmasking` True).
        grid: the time grid (`steps` sets the grouped first-hitting cells and confidence's schedule).
        call: `call(x_rows, sigma_rows, rows) -> log_score` on the rows `rows` (int64 indices into the
            batch); a block model's sampler selects their cached keys and values with them.
        x: int64 `[B, L]` start.
        seed: the seed; row `b` is keyed by `(seed, b)`.
        ops: the backend.
        progress: a tqdm bar on stderr over the network calls.

    Returns:
        `(x, network_calls, rows_evaluated)`.
    """
    batch = x.shape[0]
    rows = torch.arange(batch, dtype=torch.int64, device=x.device)
    n_free = (x == grid.graph.mask_id).sum(-1)  # (B,) the MASK count at the first call
    calls = evaluated = 0
    bar = (
        progress_bar(predictor.total_calls(grid, int(n_free[0]) if batch else 0), predictor.name)
        if progress
        else None
    )
    try:
        with torch.no_grad():
            k = 0
            while not predictor.finished(grid, x, k):
                active = predictor.active(grid, k, x, seed=seed, rows=rows)  # (B,) or None: all
                if active is not None and not bool(active.any()):
                    k += 1  # no row has a position to draw at this call
                    continue
                sigma = predictor.noise_level(grid, k, x, seed=seed, rows=rows, n_free=n_free)  # (B,)
                if active is None:
                    log_score = call(x, sigma, rows)  # (B, L, dim)
                    n_rows = batch
                else:
                    idx = active.nonzero().squeeze(1)
                    out = call(x[idx], sigma[idx], idx)  # (b, L, dim)
                    log_score = out.new_zeros((batch, *out.shape[1:])).index_copy_(0, idx, out)  # (B, L, dim)
                    n_rows = idx.numel()
                calls, evaluated = calls + 1, evaluated + n_rows
                if bar is not None:
                    bar.update(1)
                x = predictor.step(grid, log_score, k, x, ops=ops, seed=seed, rows=rows)
                k += 1
    finally:
        if bar is not None:
            bar.close()
    return x, calls, evaluated
