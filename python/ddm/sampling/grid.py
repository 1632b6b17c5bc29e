"""The grid sampler's loop, shared by `ddm.sample` and block-by-block sampling (`ddm.sampling.blocks`).

From the start `x` (the limit law, with the fixed tokens written in), one network call and one
`Predictor.step` per point of the sampler's time grid. With `cache`, a row whose tokens did not change
since the model last saw it reuses that output, shifted to the new noise level (exact for an absorbing
model whose output depends on sigma only through the closed-form scale, docs/math.md section 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddm.graphs import log_expm1
from ddm.sampling.predictors import Grid, Predictor

__all__ = ["run_grid"]


def run_grid(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    predictor: Predictor,
    grid: Grid,
    x: torch.Tensor,
    fixed: Any,
    *,
    seed: int,
    ops: Any,
    cache: bool,
    sigma_dtype: torch.dtype,
    on_call: Callable[[int], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run a grid predictor on `grid` from `x` `[B, L]`; returns the last tokens.

    Args:
        call: `call(x_rows, sigma_rows, rows) -> log_score` on the rows `rows` (int64 indices into the
            batch) of the batch.
        predictor: a grid predictor (one step per point of the grid).
        grid: the time grid.
        x: int64 `[B, L]`, the start.
        fixed: a `ddm.sampling.conditioning.Fixed` written in before every step and at the end, or None.
        seed: the seed of the steps.
        ops: the backend (`ddm.sampling.ops`).
        cache: reuse the last output of a row whose tokens did not change.
        sigma_dtype: the dtype of the noise level handed to `call`.
        on_call: called with the number of rows of each network call.
        on_step: called after each step (a progress bar).
    """
    batch = x.shape[0]
    device = x.device
    n_eval = grid.n_eval
    all_rows = torch.arange(batch, dtype=torch.int64, device=device)
    base_out: torch.Tensor | None = None  # (B, L, dim) the last network output of every row
    base_x: torch.Tensor | None = None  # (B, L) the tokens it was computed at
    base_l = torch.zeros(batch, dtype=torch.float64, device=device)  # (B,) log expm1(sigma) there
    # Once per run, not per step: the noise levels of the whole grid (float64 for the cache, `sigma_dtype`
    # for the call; row k is step k's) and, for the Rust step, two output buffers used in turn (a step
    # reads one and writes the other).
    sigma_64 = grid.sigma_bar[:n_eval].to(device)[:, None].expand(-1, batch).contiguous()  # (n_eval, B)
    sigma_in = sigma_64.to(sigma_dtype)  # (n_eval, B)
    l_grid = log_expm1(sigma_64) if cache else None  # (n_eval, B)
    buffers = None
    if ops.name == "rust" and device.type == "cpu":
        buffers = [torch.empty(x.shape, dtype=torch.int64) for _ in range(2)]  # 2 x (B, L)
    for k in range(n_eval):
        if fixed is not None:
            x = fixed.apply(x)
        sigma = sigma_in[k]  # (B,) sigma_bar(t_k)
        if not cache:
            log_score = call(x, sigma, all_rows)
            if on_call is not None:
                on_call(batch)
        else:
            assert l_grid is not None
            l_now = l_grid[k]  # (B,)
            if base_out is None:
                changed = torch.ones(batch, dtype=torch.bool, device=device)  # (B,)
            else:
                changed = (x != base_x).any(dim=-1)  # (B,)
            n_changed = int(changed.sum())
            if n_changed == batch:
                base_out = call(x, sigma, all_rows)
                base_l = l_now.clone()
            elif n_changed:
                idx = changed.nonzero().squeeze(1)
                assert base_out is not None
                base_out = base_out.index_copy(0, idx, call(x[idx], sigma[idx], idx))
                base_l = base_l.index_copy(0, idx, l_now[idx])
            if n_changed and on_call is not None:
                on_call(n_changed)
            base_x = x
            assert base_out is not None
            # docs/math.md section 4: l = raw - log expm1(sigma) - log(dim - 1), so moving from the sigma
            # of the call to this one shifts every entry but the current token's (kept 0)
            shift = (base_l - l_now).to(base_out.dtype)[:, None, None]  # (B, 1, 1)
            log_score = (base_out + shift).scatter_(-1, x[..., None], 0.0)  # (B, L, dim)
        out = None if buffers is None else buffers[k % 2]
        if out is not None and out.data_ptr() == x.data_ptr():  # a fixed-token copy is never one
            out = buffers[(k + 1) % 2]
        x = predictor.step(grid, log_score.detach(), k, x, ops=ops, seed=seed, rows=all_rows, out=out)
        if on_step is not None:
            on_step()
    if fixed is not None:
        x = fixed.apply(x)
    return x
