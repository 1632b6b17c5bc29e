"""Training: the run config (`config`), the objective's keyed draws and losses (`objective`), the
`Trainer` and its callbacks (`trainer`, `callbacks`), the optimizers (`optim`), multi-process training
on torch.distributed (`distributed`) and SDTT distillation into a few-step student (`distill`, whose
entry point `ddm.distill` is). `train` is the entry point of training (`loop`). The corpus a run caches
and records is `ddm.io.rundata`.
"""

from __future__ import annotations

from ddm.training.config import TrainConfig, load_config
from ddm.training.loop import train
from ddm.training.objective import Objective
from ddm.training.trainer import Callback, Trainer

__all__ = ["Callback", "Objective", "TrainConfig", "Trainer", "load_config", "train"]
