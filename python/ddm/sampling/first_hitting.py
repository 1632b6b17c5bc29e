"""First-hitting sampling for the absorbing graph (Zheng et al. 2024, arXiv 2409.02908; docs/math.md 8).

The reverse absorbing process unmasks position `i` at its masking time `tau_i`; given all-MASK at `t = 1`
the times of the free positions are i.i.d. with `1 - alpha(tau_i) = (1 - alpha(1)) u_i`, `u_i ~ U(0, 1)`,
that is `sigma_bar(tau_i) = -log1p(expm1(-sigma_bar(1)) u_i)`. Drawing every `u_i` up front (keyed by
`(seed, sequence, position)`) and unmasking in decreasing order of `tau` is the first-hitting sampler of
section 8.2-8.3 (the next time is the maximum of the remaining ones, its position uniform among them):
each event calls the model at `x_{tau}` and `sigma_bar(tau)` and draws the token from the model's
conditional over the real tokens, `softmax(l_{0..N-1})` (the absorbing denoising law). With exact scores
the output law is `p0` exactly, in `L - |fixed|` network calls.

With `group_by_step=True`, the events whose times fall in the same step `(t_{k+1}, t_k]` of the grid
`t_k = linspace(1, eps, steps + 1)` share one call at `t_k` (the state there is exact) and are drawn
independently given it: at most `steps` calls, and the error of drawing them jointly as independent.

The token draws run in the Rust denoising kernel on the CPU (`ddm._core`) and in torch elsewhere, with
the temperature / top-k / top-p transform of `ddm.sampling.proposal` on the conditional.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddm import _rng
from ddm._categorical import inverse_cdf
from ddm.sampling.proposal import Proposal, apply_to_step

__all__ = ["draw_masked", "event_cells", "event_levels", "first_hitting", "masking_order_keys", "next_event"]

# stream tags of the first-hitting and confidence samplers (torch); the Rust draws use the step domain
STREAM_TIME = 0x5EED0014
STREAM_TOKEN = 0x5EED0015


def masking_order_keys(seed: int, rows: torch.Tensor, length: int) -> torch.Tensor:
    """The uniforms `u_i`, `[B, L]` float64, keyed by `(seed, sequence, position)`: a larger `u_i` is an
    earlier unmasking time (`sigma_bar(tau_i)` increases with `u_i`)."""
    return _rng.uniforms(seed, STREAM_TIME, 0, rows, length)


def draw_masked(
    graph: Any,
    log_score: torch.Tensor,
    x: torch.Tensor,
    where: torch.Tensor,
    sigma: torch.Tensor,
    *,
    seed: int,
    step: int,
    rows: torch.Tensor,
    proposal: Proposal,
    use_rust: bool,
) -> torch.Tensor:
    """Draw a real token at every position of `where` from the model's (transformed) conditional.

    The law is the absorbing denoising step at a MASK: `softmax(l_{0..N-1})`, then the proposal
    transform. The draw at `(b, i)` is keyed by `(seed, step, rows[b], i)`.

    Args:
        graph: the absorbing graph.
        log_score: `[B, L, dim]` log-scores at `x`.
        x: int64 `[B, L]` current tokens.
        where: bool `[B, L]`, the positions to draw (each must be MASK in `x`).
        sigma: float64 `[B]` noise level of the call (only checked; the law does not depend on it).
        seed: the seed.
        step: the step counter of the key.
        rows: int64 `[B]` sequence indices of the key, `offset + arange(B)`.
        proposal: temperature / top-k / top-p.
        use_rust: draw in the Rust core (CPU) instead of torch.

    Returns:
        int64 `[B, L]`: `x` with the drawn tokens written at `where`.
    """
    mask_id = graph.dim - 1
    if use_rust:
        from ddm.sampling import _native

        # real token 0 elsewhere: the kernel leaves (and never reads) positions that are not MASK
        xin = torch.where(where, mask_id, 0).to(device="cpu", dtype=torch.int64).contiguous()
        ls = log_score.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (B, L, dim)
        level = sigma.detach().to(device="cpu", dtype=torch.float64).contiguous()  # (B,)
        offset = int(rows[0]) if rows.numel() else 0  # rows = offset + arange(B)
        if proposal.neutral_for(graph.dim):
            new = _native.reverse_step("denoise", graph, xin, ls, level, seed, step, seq_offset=offset)
        else:
            new = _native.proposal_step("denoise", graph, xin, ls, level, seed, step, proposal, offset)
        return torch.where(where, new.to(x.device), x)
    from ddm.sampling import torch_steps

    b_idx, i_idx = where.nonzero(as_tuple=True)  # (M,)
    if b_idx.numel() == 0:
        return x
    masked = torch.full((b_idx.numel(), 1), mask_id, dtype=torch.int64, device=x.device)  # (M, 1)
    ls = log_score[b_idx, i_idx][:, None, :]  # (M, 1, dim)
    probs = torch_steps.denoise_step_probs(graph, masked, ls, sigma[b_idx])  # (M, 1, dim)
    probs = apply_to_step(probs, masked, proposal)[:, 0]  # (M, dim)
    u = _rng.uniforms(seed, STREAM_TOKEN, step, rows, x.shape[1])[b_idx, i_idx]  # (M,)
    out = x.clone()
    out[b_idx, i_idx] = inverse_cdf(probs, u)
    return out


def event_levels(
    schedule: Any, seed: int, rows: torch.Tensor, length: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys `u_i` and `sigma_bar(tau_i)` of every position's unmasking time, `[B, L]` float64 each.

    `sigma_bar(tau_i) = -log1p(expm1(-sigma_bar(1)) u_i)` with the keyed `u_i` of `masking_order_keys`,
    not below `sigma_bar(eps)` (a model input > 0). The order of the events is that of `u` (the clamp
    makes levels equal, never keys).
    """
    t = torch.tensor([1.0, float(eps)], dtype=torch.float64)
    sb_one, sb_eps = (float(v) for v in schedule.total_noise(t))
    u = masking_order_keys(seed, rows, length).to(rows.device)  # (B, L)
    levels = -torch.log1p(torch.expm1(torch.tensor(-sb_one, dtype=torch.float64)) * u)
    return u, levels.clamp_min(sb_eps)


def next_event(x: torch.Tensor, keys: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next position to unmask in each row: the MASK with the latest time (the largest key `u`).

    Returns `(pos, has)`: int64 `[B]` (0 where the row has no MASK left) and bool `[B]`. Ties go to the
    lower position, as a stable descending sort orders them.
    """
    masked = x == mask_id  # (B, L)
    key = torch.where(masked, keys, -1.0)  # (B, L): keys lie in [0, 1)
    return key.argmax(dim=-1), masked.any(dim=-1)


def event_cells(levels: torch.Tensor, sb_grid: torch.Tensor) -> torch.Tensor:
    """The grid step `k` whose cell `(sb_grid[k + 1], sb_grid[k]]` holds each level, `[B, L]` int64.

    `sb_grid` is `sigma_bar` on `linspace(1, eps, steps + 1)`, decreasing; levels below the grid go to
    the last cell.
    """
    steps = sb_grid.numel() - 1
    return (steps - torch.searchsorted(sb_grid.flip(0).contiguous(), levels, right=False)).clamp(0, steps - 1)


def first_hitting(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    graph: Any,
    schedule: Any,
    x: torch.Tensor,
    free: torch.Tensor,
    *,
    seed: int,
    steps: int,
    eps: float,
    group_by_step: bool,
    proposal: Proposal,
    use_rust: bool,
    on_call: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the first-hitting sampler from `x` (MASK at every free position).

    Args:
        call: `call(x_rows, sigma_rows, rows) -> log_score` on the subset `rows` (int64) of the rows
            (counted by the caller).
        graph: the absorbing graph.
        schedule: the noise schedule.
        x: int64 `[B, L]`, MASK at the free positions, the fixed tokens elsewhere.
        free: bool `[L]`, the positions to generate.
        seed: the seed; sequence `b` depends only on `(seed, b)`.
        steps: the grid size (used with `group_by_step`).
        eps: the last time of the grid; the model is never called below `sigma_bar(eps)`.
        group_by_step: share one call between the events of one grid step.
        proposal: the transform of the conditional.
        use_rust: token draws in the Rust core.
        on_call: called with the number of rows of each network call.

    Returns:
        int64 `[B, L]` with every free position unmasked.
    """
    batch, length = x.shape
    device = x.device
    mask_id = graph.dim - 1
    rows = torch.arange(batch, dtype=torch.int64, device=device)
    u, sig = event_levels(schedule, seed, rows, length, eps)  # (B, L) each
    free_b = free.to(device)[None, :].expand(batch, length)  # (B, L)

    if not group_by_step:
        for e in range(int(free.sum())):  # every row has the same free positions: one event each per call
            pos, _ = next_event(x, u, mask_id)  # (B,)
            sigma = sig.gather(1, pos[:, None])[:, 0]  # (B,)
            log_score = call(x, sigma, rows)
            if on_call is not None:
                on_call(batch)
            where = torch.zeros_like(free_b).scatter_(1, pos[:, None], True)  # (B, L)
            x = draw_masked(graph, log_score, x, where, sigma, seed=seed, step=e, rows=rows,
                            proposal=proposal, use_rust=use_rust)  # fmt: skip
        return x

    grid = torch.linspace(1.0, float(eps), steps + 1, dtype=torch.float64)
    sb_grid = schedule.total_noise(grid).to(torch.float64).to(device)  # (steps + 1,) decreasing
    cell = event_cells(sig, sb_grid)  # (B, L)
    for k in range(steps):
        where = free_b & (cell == k)  # (B, L)
        active = where.any(-1)  # (B,)
        if not bool(active.any()):
            continue
        idx = active.nonzero().squeeze(1)
        sigma = sb_grid[k].expand(batch).clone()  # (B,)
        out = call(x[idx], sigma[idx], idx)  # (b, L, dim), only the rows with an event in this step
        if on_call is not None:
            on_call(idx.numel())
        # the other rows' scores are never read (no position of theirs is drawn)
        log_score = out.new_zeros((batch, *out.shape[1:])).index_copy_(0, idx, out)  # (B, L, dim)
        x = draw_masked(graph, log_score, x, where, sigma, seed=seed, step=k, rows=rows,
                        proposal=proposal, use_rust=use_rust)  # fmt: skip
    return x
