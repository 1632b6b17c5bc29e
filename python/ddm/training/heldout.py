"""The held-out split over many epochs: when to evaluate, the best checkpoint, early stopping.

On a small corpus trained for many epochs a model's held-out figure falls, bottoms out and rises again
(an autoregressive model overfits after some 20 epochs of Hamlet): the run is judged by its best
evaluation, not its last. Two callbacks, added by `ddm.training.callbacks.default_callbacks`:

- `BestCheckpoint` (rank 0) follows the evaluation records (`eval_bits_per_token`: the bound, or the
  exact NLL of the autoregressive baseline, of the EMA weights) and, with `keep_best` or `early_stop`,
  writes the checkpoint of each new best to `<run_dir>/best/` (a run directory of one checkpoint:
  `ddm.load(run_dir / "best")` and `ddm eval` read it).
- `EarlyStopping` (every rank) stops the run, with a checkpoint, once `early_stop` evaluations in a row
  have not improved on the best. Rank 0 decides; the decision is summed over the ranks at the steps that
  every rank knows are evaluated, so all of them stop at the same step.

Resumed, both rebuild their state from the log records up to the resumed step, so a resumed run keeps,
and stops at, what the uninterrupted run would.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ddm.errors import InvalidArgument
from ddm.io import checkpoint as ckpt
from ddm.training.trainer import Callback, StepStats, Trainer, say

__all__ = ["BEST", "BestCheckpoint", "EarlyStopping", "evaluation_due", "has_heldout", "heldout_callbacks"]

BEST = "best"  # <run_dir>/best/: the run directory of the best checkpoint


def has_heldout(trainer: Trainer) -> bool:
    """Whether the run has a held-out split of at least one block (else it never evaluates)."""
    return trainer.corpus.n_val >= trainer.cfg.seq_len


def evaluation_due(trainer: Trainer, step: int | None = None) -> bool:
    """Whether the held-out split is evaluated at `step` (default: the step just reached): every
    `eval_every` steps, at the step where the epoch count passes a multiple of `eval_every_epochs`, and at
    the last step. The same answer on every rank (a function of the step and the config)."""
    cfg = trainer.cfg
    step = trainer.step if step is None else step
    if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
        return True
    k = cfg.eval_every_epochs
    if not k > 0 or step < 1:
        return False
    at = trainer.order.epoch_at
    return math.floor(round(at(step) / k, 9)) > math.floor(round(at(step - 1) / k, 9))


class BestCheckpoint(Callback):
    """Tracks the best held-out evaluation (`eval_bits_per_token`, lower is better) and, when `write`,
    keeps its checkpoint in `<run_dir>/best/`.

    Attributes:
        best: the best value so far (bits per token; inf before the first evaluation).
        best_step: its step (None before the first evaluation).
        since_best: evaluations since the best (0 right after a new best).
    """

    def __init__(self, trainer: Trainer, records: list[dict[str, Any]], *, write: bool) -> None:
        self.write = write
        self.path = trainer.run_dir / BEST
        self.best, self.best_step, self.since_best = math.inf, None, 0
        for rec in records:  # a resumed run: the records up to the resumed step
            if "eval_bits_per_token" in rec:
                self._update(rec)

    def _update(self, record: dict[str, Any]) -> bool:
        value = record["eval_bits_per_token"]
        if value < self.best:
            self.best, self.best_step, self.since_best = value, record["step"], 0
            return True
        self.since_best += 1
        return False

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if "eval_bits_per_token" in record and self._update(record) and self.write:
            self.save(trainer, record)

    def save(self, trainer: Trainer, record: dict[str, Any]) -> Path:
        """Writes the current weights (raw and EMA; no optimizer state) as `<run_dir>/best/`'s checkpoint."""
        best = {k: record[k] for k in ("step", "epoch", "eval_bits_per_token") if k in record}
        return ckpt.save(
            self.path,
            trainer.step,
            model=trainer.model,
            config=trainer.ckpt_config,
            ema=trainer.ema,
            state={"best": best, "tokens_seen": trainer.tokens_seen, "elapsed_s": trainer.elapsed},
            keep=1,
        )

    def on_train_end(self, trainer: Trainer) -> None:
        if self.write and self.best_step is not None and trainer.cfg.progress:
            what = "NLL" if trainer.autoregressive else "bound"
            kept = f", kept in {self.path}" if self.write else ""
            say(
                f"ddm train: best held-out {what} {self.best:.4f} bits/token at step {self.best_step} "
                f"(epoch {trainer.order.epoch_at(self.best_step):.2f}){kept}"
            )


class EarlyStopping(Callback):
    """Stops the run (with a checkpoint) at the evaluation that makes `patience` in a row without a new
    best. `best` is rank 0's `BestCheckpoint` (None on the other ranks, which follow rank 0's vote)."""

    def __init__(self, trainer: Trainer, best: BestCheckpoint | None, patience: int) -> None:
        if not has_heldout(trainer):
            raise InvalidArgument(
                f"early_stop = {patience} needs a held-out split of at least one block: this run has "
                f"{trainer.corpus.n_val} held-out tokens, fewer than seq_len = {trainer.cfg.seq_len} "
                "(raise val_fraction, or use a longer corpus)"
            )
        self.best, self.patience = best, patience

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if not evaluation_due(trainer) or trainer.step >= trainer.stop:
            return
        vote = float(self.best is not None and self.best.since_best >= self.patience)
        (votes,) = trainer.env.sum([vote], trainer.device)  # every rank evaluates this at the same steps
        if votes <= 0:
            return
        trainer.stop = trainer.step
        if trainer.last_path is None or trainer.last_path.name != f"step_{trainer.step:08d}":
            trainer.save()
        if self.best is not None and trainer.cfg.progress:
            say(
                f"ddm train: early stop at step {trainer.step} (epoch {trainer.epoch:.2f}): {self.patience} "
                f"evaluations without improving on {self.best.best:.4f} bits/token (step "
                f"{self.best.best_step})"
            )


def heldout_callbacks(trainer: Trainer, records: list[dict[str, Any]] | None) -> list[Callback]:
    """The callbacks of the held-out best and early stopping; `records`: rank 0's log records (None on
    the other ranks)."""
    cfg = trainer.cfg
    best = None
    callbacks: list[Callback] = []
    if records is not None:
        best = BestCheckpoint(trainer, records, write=cfg.keep_best or cfg.early_stop > 0)
        callbacks.append(best)
    if cfg.early_stop > 0:
        callbacks.append(EarlyStopping(trainer, best, cfg.early_stop))
    return callbacks
