"""Exponential moving average of the weights (the EMA model is the one evaluated and sampled)."""

from __future__ import annotations

import torch
from torch import nn

from ddm.errors import InvalidArgument

__all__ = ["EMA"]


class EMA:
    """EMA of a module's parameters with a warm-up of the decay.

    The decay used at update n (counting from 0) is `min(decay, (1 + n) / (10 + n))`, so the average of a
    short run is not dominated by the random initial weights; for long runs it is SEDD's constant decay
    (0.9999 in SEDD's configs).

    Args:
        model: the module whose parameters are averaged.
        decay: the asymptotic decay in `[0, 1)`.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise InvalidArgument(f"ema decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * param."""
        d = self.current_decay()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the averaged weights into `model`."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by parameter name."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restores averaged tensors (same names as the model's parameters) and the update count."""
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise InvalidArgument(f"EMA state is missing tensors: {sorted(missing)[:5]}")
        for name, t in tensors.items():
            if name not in self.shadow:
                raise InvalidArgument(f"EMA state has an unknown tensor {name!r}")
            self.shadow[name].copy_(t)
        self.num_updates = int(num_updates)
