"""Training: `train`, the entry point; the steps are `ddm.training.trainer.Trainer`'s.

One optimizer step draws `batch_size` blocks of `seq_len` tokens at random offsets of the training split (in
`grad_accum` micro-batches), draws `t ~ U[eps_t, 1]` and `x_t ~ p_{t|0}(. | x0)` per sequence, and minimises
the mean over sequences of `sigma(t) * sum_i DSE_i` (docs/math.md section 4; SEDD eq. 10), with AdamW (or Muon
on the blocks' matrices, `ddm.training.optim`), a linear warm-up then a constant or decaying learning rate
(`lr_at`), gradient clipping and an EMA of the weights. On CUDA the network runs under bf16 autocast, and on a
CPU with native bf16 too when `cpu_bf16` is set; the weights, the optimizer and the score entropy stay in
float32 or wider.

Randomness: the initial weights come from torch's global RNG seeded with `config.seed`; the block
offsets, `t` and `x_t` of row j of the global batch of step s are counter-based draws keyed by
`(seed, s, j)` (`ddm.training.objective`), so the data position is the step itself and a step's global batch
does not depend on how it is split; dropout reseeds the global RNG per micro-batch from
`(seed, step, first row)`. A run stopped at any checkpoint and resumed gives bit-identical weights to an
uninterrupted run on CPU.

Several processes (`torchrun ... -m ddm train`, or `ddm train --nproc K`) train with
DistributedDataParallel on their rows of each global batch; see `ddm.training.distributed` and
docs/distributed.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ddm.errors import InvalidArgument
from ddm.training import distributed as ddist
from ddm.training.callbacks import default_callbacks
from ddm.training.config import TrainConfig, load_config
from ddm.training.trainer import RESUME_FIELDS, Callback, Trainer, lr_at

__all__ = ["RESUME_FIELDS", "lr_at", "train"]


def _as_config(config: TrainConfig | dict | str | os.PathLike) -> TrainConfig:
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise InvalidArgument(f"config must be a TrainConfig, dict or TOML path, got {type(config).__name__}")


def train(
    config: TrainConfig | dict | str | os.PathLike,
    *,
    resume: bool = False,
    until_step: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Trains a score model and returns the path of its last checkpoint.

    Args:
        config: a `TrainConfig`, a dict of its fields, or a TOML file.
        resume: continue the run in `config.run_dir` from its latest checkpoint (exactly: the result is
            the same as a run that was never interrupted). The fields in `RESUME_FIELDS` must match the
            checkpoint's; `steps` and the logging fields may change.
        until_step: stop at this step (with a checkpoint) even if `config.steps` is larger, e.g. to split
            a run across jobs; resume later to continue.
        callbacks: more `ddm.training.trainer.Callback`s, run after the run's own (log, evaluation,
            checkpoints, plot, console: `ddm.training.callbacks.default_callbacks`).

    Under torchrun (several processes) every process calls this; rank 0 logs, evaluates and writes the
    checkpoints, and every process returns the path of the last one. Ctrl-C saves a checkpoint at the end
    of the step, prints the command that resumes the run, and raises `KeyboardInterrupt`.

    Returns:
        The checkpoint directory written last.
    """
    cfg = _as_config(config)
    env, device = ddist.init(cfg.device, cfg.dist_timeout, group=cfg.parallel == "fsdp")
    try:
        trainer = Trainer(cfg, env, device, resume=resume, until_step=until_step)
        trainer.add_callbacks(*default_callbacks(trainer), *callbacks)
        return trainer.fit()
    finally:
        env.shutdown()
