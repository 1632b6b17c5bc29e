"""The tiny training configuration the training, checkpoint, quality and AR tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A one-block, 32-wide model on 16-character blocks: a training step takes milliseconds.
TINY_MODEL = dict(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16)


def tiny_run(run_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """A `TrainConfig` dict for a few quiet steps of the tiny model in `run_dir`; `overrides` win."""
    cfg: dict[str, Any] = dict(
        run_dir=str(run_dir),
        **TINY_MODEL,
        batch_size=4,
        steps=4,
        warmup_steps=2,
        log_every=1,
        eval_every=0,
        eval_sequences=2,
        eval_num_t=2,
        save_every=4,
        progress=False,
        plot=False,
    )
    cfg.update(overrides)
    return cfg
