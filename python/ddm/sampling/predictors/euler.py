"""The Euler predictor: first-order tau-leaping with the reverse rates (SEDD eq. 17, algorithm 1).

Step `k < steps` moves with `probs_y = rate_dt Q(x, y) s_y` for `y != x`, `rate_dt = sigma(t_k) (t_k -
t_{k+1})` (docs/math.md section 5); the last call of a denoised grid removes all remaining noise. For
the absorbing graph with the log-linear schedule it is the analytic step, bit for bit (`expm1(d) = h`).
"""

from __future__ import annotations

from ddm.sampling.predictors.base import Grid, GridPredictor, denoise_kind, register

__all__ = ["Euler"]


@register
class Euler(GridPredictor):
    """Euler tau-leaping on the grid (options: the proposal transform of `Config`)."""

    name = "euler"

    def kind(self, grid: Grid, k: int) -> tuple[str, float]:
        dt = float(grid.times[k] - grid.times[k + 1]) if k < grid.steps else 0.0
        return denoise_kind(grid, k) or ("euler", float(grid.rates[k]) * dt)
