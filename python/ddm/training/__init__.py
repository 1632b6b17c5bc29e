"""Training: the run config (`ddm.training.config`), the DWDSE training loop (`ddm.training.loop`) and
multi-process training on torch.distributed (`ddm.training.distributed`).
"""

from __future__ import annotations

from ddm.training.config import TrainConfig, load_config
from ddm.training.loop import train

__all__ = ["TrainConfig", "load_config", "train"]
