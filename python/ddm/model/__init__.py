"""The score network (DiT-style transformer), its embeddings and the EMA of its weights."""

from __future__ import annotations

from ddm.model.autoregressive import ARModel
from ddm.model.ema import EMA
from ddm.model.transformer import SIZES, ModelConfig, ScoreModel, is_absorbing

__all__ = ["ARModel", "EMA", "SIZES", "ModelConfig", "ScoreModel", "is_absorbing"]
