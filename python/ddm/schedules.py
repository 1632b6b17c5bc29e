"""Noise schedules: total noise `sigma_bar(t)`, rate `sigma(t) = d sigma_bar / dt` (docs/math.md section 3).

A schedule maps diffusion time `t in [0, 1]` to the pair `(sigma_bar(t), sigma(t))`, where
`sigma_bar(t) = integral_0^t sigma(s) ds` is the total noise the forward CTMC has applied by time `t`
(Lou, Meng, Ermon 2024, SEDD, section 3.3 and appendix C).

A tensor `t` keeps its floating dtype (integer tensors take torch's default dtype); a Python float becomes a
0-d tensor of torch's default dtype, as `torch.as_tensor` would make it.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch

__all__ = ["Schedule", "LogLinear", "Geometric", "from_config"]


def _as_time(t: Any) -> torch.Tensor:
    """Return `t` as a floating tensor after checking that every entry lies in `[0, 1]`."""
    if isinstance(t, bool):
        raise TypeError("t must be a float or a floating tensor, got bool")
    if isinstance(t, (int, float)):
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return torch.tensor(float(t), dtype=torch.get_default_dtype())
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a float or a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must be a real tensor, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.numel() > 0 and not bool(torch.all((t >= 0) & (t <= 1))):
        bad = t[~((t >= 0) & (t <= 1))].flatten()[0].item()
        raise ValueError(f"t must lie in [0, 1] everywhere (no NaN), found {bad}")
    return t


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


class Schedule(abc.ABC):
    """A noise schedule: `schedule(t) -> (sigma_bar(t), sigma(t))`."""

    @abc.abstractmethod
    def total_noise(self, t: Any) -> torch.Tensor:
        """`sigma_bar(t)`, the total noise at time `t` (same shape as `t`)."""

    @abc.abstractmethod
    def rate_noise(self, t: Any) -> torch.Tensor:
        """`sigma(t) = d sigma_bar / dt`, the noise rate at time `t` (same shape as `t`)."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable description, inverted by `ddm.schedules.from_config`."""

    def time_of(self, sigma_bar: torch.Tensor) -> torch.Tensor:
        """The time `t` with `total_noise(t) = sigma_bar`, for `sigma_bar` in `[sigma_bar(0), sigma_bar(1)]`.

        The likelihood bound draws noise levels first and needs their times (`ddm.eval.bound`); a schedule
        without a closed-form inverse raises NotImplementedError, and the bound then draws times directly.
        """
        raise NotImplementedError(f"{type(self).__name__} has no inverse of its total noise")

    def __call__(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(sigma_bar(t), sigma(t))` for `t` in `[0, 1]` (float or tensor of any shape)."""
        return self.total_noise(t), self.rate_noise(t)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_config().items())))

    def __repr__(self) -> str:
        cfg = self.to_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "type")
        return f"{type(self).__name__}({args})"


class LogLinear(Schedule):
    """`sigma_bar(t) = -log(1 - (1 - eps) t)`, `sigma(t) = (1 - eps) / (1 - (1 - eps) t)` (SEDD appendix C).

    With the absorbing graph the masked fraction `1 - exp(-sigma_bar(t))` is exactly `(1 - eps) t`, and
    `sigma_bar(1) = ln(1 / eps)`.

    Args:
        eps: the fraction of tokens left unmasked at `t = 1`, in `(0, 1)`.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        eps = _positive_float(eps, "eps")
        if eps >= 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.eps = eps

    def _one_minus(self, t: torch.Tensor) -> torch.Tensor:
        """`1 - (1 - eps) t`, written as `(1 - t) + eps t` for `t >= 1/2`, where `1 - t` is exact and the
        value near `eps` keeps full relative accuracy (`1 - eps` itself is rounded)."""
        return torch.where(t < 0.5, 1.0 - (1.0 - self.eps) * t, (1.0 - t) + self.eps * t)

    def total_noise(self, t: Any) -> torch.Tensor:
        t = _as_time(t)
        small = t.clamp(max=0.5)  # log1p is accurate near t = 0, the log branch near t = 1
        return torch.where(t < 0.5, -torch.log1p(-(1.0 - self.eps) * small), -torch.log(self._one_minus(t)))

    def rate_noise(self, t: Any) -> torch.Tensor:
        t = _as_time(t)
        return (1.0 - self.eps) / self._one_minus(t)

    def time_of(self, sigma_bar: torch.Tensor) -> torch.Tensor:
        # 1 - (1 - eps) t = exp(-sigma_bar): t = -expm1(-sigma_bar) / (1 - eps)
        return (-torch.expm1(-sigma_bar) / (1.0 - self.eps)).clamp(0.0, 1.0)

    def to_config(self) -> dict[str, Any]:
        return {"type": "loglinear", "eps": self.eps}


class Geometric(Schedule):
    """`sigma_bar(t) = sigma_min^(1 - t) sigma_max^t`, `sigma(t) = sigma_bar(t) ln(sigma_max / sigma_min)`.

    The schedule SEDD uses with the uniform graph (appendix C). `sigma_bar(0) = sigma_min` rather than 0:
    the data are seen through a tiny amount of noise.

    Args:
        sigma_min: total noise at `t = 0`, > 0.
        sigma_max: total noise at `t = 1`, > `sigma_min`.
    """

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0) -> None:
        sigma_min = _positive_float(sigma_min, "sigma_min")
        sigma_max = _positive_float(sigma_max, "sigma_max")
        if not sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def total_noise(self, t: Any) -> torch.Tensor:
        t = _as_time(t)
        return torch.exp((1.0 - t) * math.log(self.sigma_min) + t * math.log(self.sigma_max))

    def rate_noise(self, t: Any) -> torch.Tensor:
        return self.total_noise(t) * math.log(self.sigma_max / self.sigma_min)

    def time_of(self, sigma_bar: torch.Tensor) -> torch.Tensor:
        t = (torch.log(sigma_bar) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return t.clamp(0.0, 1.0)

    def to_config(self) -> dict[str, Any]:
        return {"type": "geometric", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def from_config(config: dict[str, Any]) -> Schedule:
    """Build a schedule from `{"type": "loglinear", "eps": ...}` or
    `{"type": "geometric", "sigma_min": ..., "sigma_max": ...}` (missing parameters take their defaults)."""
    if not isinstance(config, dict):
        raise TypeError(f"schedule config must be a dict, got {type(config).__name__}")
    kinds: dict[str, tuple[type[Schedule], set[str]]] = {
        "loglinear": (LogLinear, {"eps"}),
        "geometric": (Geometric, {"sigma_min", "sigma_max"}),
    }
    kind = config.get("type")
    if kind not in kinds:
        raise ValueError(f"schedule config 'type' must be one of {sorted(kinds)}, got {kind!r}")
    cls, keys = kinds[kind]
    params = {k: v for k, v in config.items() if k != "type"}
    extra = set(params) - keys
    if extra:
        raise ValueError(f"unknown keys {sorted(extra)} for a {kind} schedule config")
    return cls(**params)
