"""The analytic predictor: Tweedie tau-leaping (SEDD eq. 19; docs/math.md section 5).

Step `k < steps` moves from `t_k` to `t_{k+1}` with `probs_y = [exp(-dQ) s]_y exp(dQ)(x, y)`, `d =
sigma_bar(t_k) - sigma_bar(t_{k+1})`, clipped and renormalised (`ddm.sampling.torch_steps`); the last
call of a denoised grid removes all remaining noise.
"""

from __future__ import annotations

from ddm.sampling.predictors.base import Grid, GridPredictor, denoise_kind, register

__all__ = ["Analytic"]


@register
class Analytic(GridPredictor):
    """Tweedie tau-leaping on the grid (options: the proposal transform of `Config`)."""

    name = "analytic"

    def kind(self, grid: Grid, k: int) -> tuple[str, float]:
        return denoise_kind(grid, k) or ("analytic", float(grid.sigma_bar[k] - grid.sigma_bar[k + 1]))
