"""Embeddings of the score network: tokens, the noise level and rotary positions.

The design follows the DiT backbone of SEDD (Lou, Meng, Ermon 2024, appendix C.1), which itself follows
Peebles & Xie (2023): sinusoidal features of the total noise passed through a small MLP, and rotary
position embedding (Su et al. 2021, RoFormer) on the queries and keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddm.errors import InvalidArgument

__all__ = ["NoiseEmbedding", "Rotary", "apply_rotary", "rotate_pairs", "sinusoidal_features"]


def sinusoidal_features(sigma: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a scalar per sequence (Vaswani et al. 2017; as in DiT's timestep embedder).

    Args:
        sigma: noise levels, shape `[B]`.
        dim: number of features (even).
        max_period: the longest period of the sinusoids.

    Returns:
        Features of shape `[B, dim]`, float32.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half
    )  # (half,)
    args = sigma.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class NoiseEmbedding(nn.Module):
    """Embeds the total noise `sigma_bar` into the conditioning vector: sinusoids, then a 2-layer MLP."""

    def __init__(self, cond_dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, cond_dim),
            nn.SiLU(),
            nn.Linear(cond_dim, cond_dim),
        )
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """`[B]` noise levels -> `[B, cond_dim]` embedding."""
        return self.mlp(sinusoidal_features(sigma, self.frequency_dim))


class Rotary(nn.Module):
    """Cached cos/sin tables of rotary position embedding for positions `0 .. max_len - 1`."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise InvalidArgument(f"head_dim must be even for rotary embedding, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        pos = torch.arange(max_len, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)  # (max_len, head_dim / 2)
        # Buffers are derived from the config, so they are not saved with the weights.
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos", torch.cos(angles), persistent=False)
        self.register_buffer("sin", torch.sin(angles), persistent=False)

    def forward(self, length: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for the positions `start .. start + length - 1`, each `[length, head_dim / 2]`.

        Positions past the table (a block model sampling beyond its `seq_len` with a sliding context,
        `ddm.model.blocks`) extend it with the same formula; rotary attention scores depend only on the
        difference of two positions, so a window of at most `seq_len` positions stays in distribution.
        """
        end = start + length
        if end > self.cos.shape[0]:
            pos = torch.arange(end, dtype=torch.float32, device=self.inv_freq.device)
            angles = torch.outer(pos, self.inv_freq)  # (end, head_dim / 2), the __init__ formula
            self.cos, self.sin = torch.cos(angles), torch.sin(angles)
        return self.cos[start:end], self.sin[start:end]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates pairs of channels `(x[..., 2j], x[..., 2j+1])` by the angle of their position.

    Args:
        x: queries or keys, shape `[B, H, L, head_dim]`.
        cos: `[L, head_dim / 2]`.
        sin: `[L, head_dim / 2]`.

    Returns:
        Tensor of the shape and dtype of `x`.
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (B, H, L, head_dim / 2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, L, head_dim / 2, 2)
    return out.flatten(-2).to(x.dtype)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` as one complex multiplication: pair `(x[..., 2j], x[..., 2j+1])` is the complex number
    `x_2j + i x_2j+1`, turned by `cos + i sin` (one pass over `x` instead of six).

    Args:
        x: float32 `[..., L, *rest, head_dim]` with the position axis where `cos` broadcasts: `cos` and
            `sin` are `[L, 1, ..., 1, head_dim / 2]`-broadcastable (e.g. `[L, 1, 1, hd / 2]` for
            `[B, L, 2, H, hd]`). The last axis must be contiguous.
        cos: the rotary cosines.
        sin: the rotary sines.

    Returns:
        A new contiguous float32 tensor of the shape of `x`.
    """
    turn = torch.complex(cos, sin)  # (..., head_dim / 2) complex64
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * turn).flatten(-2)
