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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ddm import _rng
from ddm.errors import InvalidArgument
from ddm.sampling.predictors.base import Config, Grid, Predictor, register

__all__ = [
    "FirstHitting",
    "FirstHittingConfig",
    "event_cells",
    "event_levels",
    "masking_order_keys",
    "next_event",
]


def masking_order_keys(seed: int, rows: torch.Tensor, length: int) -> torch.Tensor:
    """The uniforms `u_i`, `[B, L]` float64, keyed by `(seed, sequence, position)`: a larger `u_i` is an
    earlier unmasking time (`sigma_bar(tau_i)` increases with `u_i`)."""
    return _rng.uniforms(seed, _rng.STREAMS["unmask_time"], 0, rows, length)


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


@dataclass(frozen=True)
class FirstHittingConfig(Config):
    """First hitting's options: the proposal transform, and grouping by grid step."""

    group_by_step: bool = field(
        default=False, metadata={"help": "first_hitting: one call per grid step (at most steps calls)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.group_by_step, bool):
            raise InvalidArgument(f"group_by_step must be a bool, got {type(self.group_by_step).__name__}")


@register
class FirstHitting(Predictor):
    """Exact first-hitting sampling: one unmasking event per call (or per grid step, grouped)."""

    name = "first_hitting"
    config_class = FirstHittingConfig
    needs_mask = True
    unmasking = True

    def __init__(self, config: Config | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._memo: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _events(
        self, grid: Grid, seed: int, rows: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`event_levels` of these rows; a pure function of its key, memoised for the run's calls."""
        key = (seed, int(rows[0]) if rows.numel() else 0, rows.numel(), length, rows.device, grid.eps,
               id(grid.schedule))  # fmt: skip
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, event_levels(grid.schedule, seed, rows, length, grid.eps))
        return self._memo[1]

    @property
    def _grouped(self) -> bool:
        return self.config.group_by_step

    def max_index(self, grid: Grid) -> int | None:
        return grid.steps - 1 if self._grouped else None

    def total_calls(self, grid: Grid, n_free: int) -> int | None:
        return grid.steps if self._grouped else n_free

    def finished(self, grid: Grid, x: torch.Tensor, k: int) -> bool:
        if self._grouped and k >= grid.steps:
            return True
        return not bool((x == grid.graph.mask_id).any())

    def _where(self, grid: Grid, k: int, x: torch.Tensor, seed: int, rows: torch.Tensor):
        """The positions drawn at call `k`, bool `[B, L]`, and their noise level, float64 `[B]`."""
        u, levels = self._events(grid, seed, rows, x.shape[1])  # (B, L) each
        masked = x == grid.graph.mask_id  # (B, L)
        if self._grouped:
            where = masked & (event_cells(levels, grid.sigma_bar.to(x.device)) == k)  # (B, L)
            return where, grid.sigma_bar[k].to(x.device).expand(x.shape[0])
        pos, has = next_event(x, u, grid.graph.mask_id)  # (B,)
        where = torch.zeros_like(masked).scatter_(1, pos[:, None], has[:, None])  # (B, L)
        return where, levels.gather(1, pos[:, None])[:, 0]

    def active(self, grid, k, x, *, seed, rows):
        # one event per row per call ungrouped (every row has the same free positions): all rows
        return self._where(grid, k, x, seed, rows)[0].any(-1) if self._grouped else None

    def noise_level(self, grid, k, x, *, seed, rows, n_free):
        return self._where(grid, k, x, seed, rows)[1]

    def step(self, grid, log_score, k, x, *, ops, seed, rows, out=None):
        where, sigma = self._where(grid, k, x, seed, rows)
        return ops.draw_masked(grid.graph, log_score, x, where, sigma, seed=seed, step=k, rows=rows,
                               proposal=self.proposal)  # fmt: skip
