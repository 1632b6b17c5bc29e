"""The `Trainer`: builds a run (corpus, model, EMA, optimizer; or resumes one), then runs the optimizer
steps; everything around a step (log, console, evaluation, checkpoints, plot) is a `Callback`
(the run's own are in `ddm.training.callbacks`).

One optimizer step draws `batch_size` blocks of `seq_len` tokens at keyed offsets of the training split (in
`grad_accum` micro-batches), and minimises the mean over sequences of the objective's per-sequence loss
(`ddm.training.objective`), or the exact NLL of the autoregressive baseline, with AdamW (or Muon,
`ddm.training.optim`), the learning rate of `lr_at`, gradient clipping and an EMA of the weights.

Ctrl-C (SIGINT) is taken at the end of the step in progress: every rank agrees on it (the vote rides on
the step's loss all-reduce), a checkpoint is saved, the command that resumes the run is printed, and
`KeyboardInterrupt` is raised. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import math
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddm.data.order import make_order
from ddm.data.pairs import keyed_length
from ddm.errors import CheckpointError, DataError, DivergenceError, InvalidArgument
from ddm.io import checkpoint as ckpt
from ddm.io import sharded
from ddm.io.rundata import load_run_corpus, source_record
from ddm.model import ScoreModel
from ddm.model.autoregressive import ARModel, sequence_nll
from ddm.training import distributed as ddist
from ddm.training.config import (
    TrainConfig,
    make_graph,
    make_schedule,
    resolved_data_order,
    with_derived_steps,
)
from ddm.training.fsdp import make_parallelism
from ddm.training.init_from import resolve_start
from ddm.training.labels import batch_labels, labelled_corpus, with_label_fn, with_labels
from ddm.training.objective import Objective, dropout_seed
from ddm.training.optim import make_optimizer

__all__ = ["RESUME_FIELDS", "Callback", "StepStats", "Trainer", "lr_at", "say"]

# Fields that define the model, its data and its randomness: a resumed run must keep them.
RESUME_FIELDS = (
    "seed",
    "objective",
    "data",
    "tokenizer",
    "val_fraction",
    "text_field",
    "separator",
    "unknown",
    "model",
    "hidden",
    "heads",
    "blocks",
    "cond_dim",
    "seq_len",
    "dropout",
    "time_conditioning",
    "graph",
    "schedule",
    "schedule_eps",
    "sigma_min",
    "sigma_max",
    "batch_size",
    "eps_t",
    "block_size",
    "block_loss",
    "optimizer",
    "pairs",
    "prompt_field",
    "response_field",
    "supervise_padding",
    "random_length_fraction",
    "init_from",
)


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of the update from `step` to `step + 1`: a linear warm-up over `warmup_steps`, then
    constant (SEDD), or a cosine or linear decay that reaches `lr * lr_final` at the last update (step
    `steps - 1`). A function of the step and the config alone, so a resumed run follows the same curve."""
    if step + 1 < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "constant":
        return config.lr
    # progress in [0, 1] from the last warm-up update (step warmup_steps - 1) to the last update
    first = max(config.warmup_steps - 1, 0)
    span = config.steps - 1 - first
    p = min(max((step - first) / span, 0.0), 1.0) if span > 0 else 1.0
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if config.lr_decay == "cosine" else 1.0 - p
    return config.lr * (config.lr_final + (1.0 - config.lr_final) * shape)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global state that third-party code may use)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step measured.

    Attributes:
        loss: the mean loss over the global batch, nats per token.
        lr: the learning rate of the step.
        grad_norm: the gradient norm before clipping (0 when clipping is off).
        seconds: the wall time of the step.
        interrupted: True when some rank was interrupted (Ctrl-C) by the end of the step.
    """

    loss: float
    lr: float
    grad_norm: float
    seconds: float
    interrupted: bool = False


def say(message: str) -> None:
    """One line for the user on stderr (flushed: it is seen before a long step)."""
    print(message, file=sys.stderr, flush=True)


class Callback:
    """A hook into a training run; every method is a no-op here."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (also when there is nothing to do)."""

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        """After an optimizer step; `trainer.step` is the step just reached."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """For every record of the log: a training record (`loss`) or an evaluation (`eval_*`)."""

    def on_save(self, trainer: Trainer, path: Path) -> None:
        """After rank 0 wrote the checkpoint `path` (before the other ranks go on)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step, or when the run stops on an error or an interrupt."""


class _Interrupt:
    """Turns the first SIGINT into a request to stop at the end of the step; a second one stops at once.
    Installed only in the main thread (where Python delivers signals)."""

    def __init__(self, prog: str = "ddm train") -> None:
        self.requested, self.prog = False, prog  # prog: the command named in the message (ddm distill too)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        say(f"{self.prog}: interrupted: saving a checkpoint at the end of this step (Ctrl-C again: now)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class Trainer:
    """One training run, built from its config (or resumed from its run directory); `fit` trains it.

    `ddm.training.train` does `trainer = Trainer(cfg, env, device, ...)`, then
    `trainer.add_callbacks(*default_callbacks(trainer), *yours)` and `trainer.fit()`. Without callbacks the
    Trainer only steps (and saves one checkpoint at the end): the log, the evaluation, the periodic
    checkpoints, the plot and the console are callbacks (`ddm.training.callbacks`).

    Args:
        cfg: the validated run config.
        env: this process's place in the job (`ddm.training.distributed.init`).
        device: this process's device.
        resume: continue the run in `cfg.run_dir` from its latest checkpoint, exactly.
        until_step: stop at this step (with a checkpoint) even if `cfg.steps` is larger.
        callbacks: the callbacks, in their order (`add_callbacks` adds more; `ddm.training.train` adds
            the run's own, `ddm.training.callbacks.default_callbacks`, first).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: ddist.DistEnv,
        device: torch.device,
        *,
        resume: bool = False,
        until_step: int | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg, self.env, self.device = cfg, env, device
        self.run_dir = Path(cfg.run_dir)
        state = self._resume_state() if resume else self._check_new_run()
        self.resumed = state is not None
        self.rows_per_micro = ddist.batch_rows(cfg.batch_size, cfg.grad_accum, env)  # this rank's rows
        self.parallel = make_parallelism(cfg, env, device)  # DDP or FSDP (ddm.training.fsdp)
        _seed_everything(cfg.seed)
        saved = ckpt.read_config(state["path"]) if state is not None else None
        record = saved.get("data") if saved is not None else None
        self.start = resolve_start(cfg, saved)  # init_from: the model the run starts from, or None
        self.corpus = self._load_corpus(record)
        if cfg.label_field:  # a label per document, for classifier-free guidance
            self.corpus = labelled_corpus(self.corpus, cfg)
        self._labels: torch.Tensor | None = None  # the labels of the micro-batch being trained
        self.corpus.check_seq_len(cfg.seq_len)
        self.order = make_order(resolved_data_order(cfg), self.corpus, cfg.seq_len, cfg.seed, cfg.batch_size)
        if self.order.name == "epochs" and hasattr(self.corpus, "masks_at"):
            raise InvalidArgument(
                "data_order 'epochs' reads windows of a token stream; prompt / response pairs are read in "
                "the 'random' order: set data_order = 'random' (and steps instead of epochs)"
            )
        if cfg.epochs > 0 or self.order.name == "epochs":  # an epoch must be at least one step
            self.order.check_batch_fits()
        self.cfg = cfg = with_derived_steps(cfg, self.order.steps_for(cfg.epochs))  # --epochs
        self.autoregressive = cfg.objective == "autoregressive"
        self._build_model()
        self.step, self.elapsed, self.tokens_seen = 0, 0.0, 0
        if state is not None:
            self._restore(state)
        self.ckpt_config = self._checkpoint_config(record)
        self.stop = min(cfg.steps, until_step) if until_step is not None else cfg.steps
        self.tokens_per_step = cfg.batch_size * cfg.seq_len
        self.last_path: Path | None = state["path"] if state is not None else None
        self.net: torch.nn.Module = self.parallel.wrap(self.model)  # DDP averages gradients in backward
        if cfg.compile:  # the forward and backward of a micro-batch, traced once per shape
            self.net = torch.compile(self.net)
        self.objective = None if self.autoregressive else Objective.from_config(cfg)
        self.callbacks: list[Callback] = list(callbacks)
        self._interrupt = _Interrupt()
        self._pending: sharded.PendingSave | None = None  # an asynchronous sharded save in flight

    # -- building the run ---------------------------------------------------------------------------

    def _check_new_run(self) -> None:
        if ckpt.latest(self.run_dir) is not None:
            raise InvalidArgument(
                f"run directory {str(self.run_dir)!r} already has checkpoints: pass resume=True (--resume) "
                "to continue it, or choose another run_dir"
            )

    def _resume_state(self) -> dict[str, Any]:
        found = ckpt.latest(self.run_dir)
        if found is None:
            raise InvalidArgument(f"resume: run directory {str(self.run_dir)!r} has no checkpoint")
        saved = ckpt.read_config(found)["train"]
        for name in RESUME_FIELDS:
            # a field added after the checkpoint was written (block_size, block_loss) had its default
            if saved.get(name, getattr(TrainConfig, name)) != getattr(self.cfg, name):
                raise InvalidArgument(
                    f"resume: {name} = {getattr(self.cfg, name)!r} differs from the checkpoint's "
                    f"{saved.get(name)!r}"
                )
        if resolved_data_order(saved) != resolved_data_order(self.cfg):  # 'auto' follows epochs
            raise InvalidArgument(
                f"resume: the data order would be {resolved_data_order(self.cfg)!r} (data_order = "
                f"{self.cfg.data_order!r}, epochs = {self.cfg.epochs:g}), the checkpoint's run read "
                f"{resolved_data_order(saved)!r}: give --data-order {resolved_data_order(saved)}"
            )
        if sharded.is_sharded(found):  # DCP: the tensors are read into the model once it is built
            return sharded.read_state(found)
        return ckpt.read_training_state(found)  # on CPU; load_state_dict moves tensors to the model

    def _load_corpus(self, record: dict[str, Any] | None) -> Any:
        cfg = self.cfg
        options = cfg.corpus_options()
        if self.start is not None:  # fine-tuning: the data in the starting model's tokens
            options["tokenizer"] = self.start.tokenizer
        corpus = None
        for turn in (True, False):  # rank 0 tokenizes the corpus (or fills its cache) first, then the others
            if self.env.is_main == turn:
                try:
                    corpus = load_run_corpus(
                        cfg.data, self.run_dir, record=record, pairs=cfg.pair_options(), **options
                    )
                except DataError as e:
                    if self.start is None:
                        raise
                    raise DataError(
                        f"init_from {cfg.init_from!r}: its tokenizer does not fit the data {cfg.data!r}: {e}"
                    ) from None
            self.env.barrier()
        return corpus

    def _build_model(self) -> None:
        cfg, tokenizer = self.cfg, self.corpus.tokenizer
        self.graph = make_graph(cfg, tokenizer.vocab_size)
        self.schedule = make_schedule(cfg)
        model = self.new_model()
        if self.start is not None:  # fine-tuning: the starting model's graph and schedule
            self.graph, self.schedule = getattr(model, "graph", None), getattr(model, "schedule", None)
        self.model = self.parallel.prepare(model)  # sharded before the optimizer sees it
        self.ema = self.parallel.make_ema(self.model, cfg.ema_decay)
        self.optimizer = make_optimizer(self.model, cfg)

    def new_model(self) -> torch.nn.Module:
        """A new, unsharded model of this run on its device (the starting model's when fine-tuning)."""
        cfg, tokenizer = self.cfg, self.corpus.tokenizer
        if self.start is not None:  # fine-tuning: the starting model's architecture, graph and weights
            model = self.start.build(cfg.objective)
            model.tokenizer = tokenizer
        elif self.autoregressive:  # the baseline: same blocks, causal, next-token cross-entropy
            model = ARModel(cfg.model_config(), tokenizer.vocab_size, tokenizer=tokenizer)
        else:
            config = with_labels(cfg.model_config(), self.corpus)  # the corpus's labels
            model = ScoreModel(config, self.graph, self.schedule, tokenizer=tokenizer)
        model = model.to(self.device)
        model.cpu_bf16 = cfg.cpu_bf16  # takes effect only on a CPU with native bf16 (cpu_has_native_bf16)
        model.grad_checkpointing = cfg.grad_checkpointing  # the same gradients, less memory
        return model

    def _restore(self, state: dict[str, Any]) -> None:
        saved_tok = ckpt.read_config(state["path"])["tokenizer"]
        if saved_tok != self.corpus.tokenizer.to_config():
            raise CheckpointError("resume: the corpus gives a different tokenizer than the checkpoint's")
        if state.get("sharded"):
            sharded.load_into(state, self.model, self.ema, self.optimizer)
        else:
            self.parallel.load(self.model, self.ema, self.optimizer, state)
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.elapsed, self.tokens_seen = state.get("elapsed_s", 0.0), state.get("tokens_seen", 0)

    def _checkpoint_config(self, record: dict[str, Any] | None) -> dict[str, Any]:
        if record is None and self.env.is_main:  # a new run (or a checkpoint from before the record)
            try:
                record = source_record(self.cfg.data)
            except FileNotFoundError:  # the source is gone: the tokens cached in the run are all there is
                record = None
        config = {
            "objective": self.cfg.objective,
            "model": self.model.config.to_dict(),
            "graph": None if self.autoregressive else self.graph.to_config(),
            "schedule": None if self.autoregressive else self.schedule.to_config(),
            "tokenizer": self.corpus.tokenizer.to_config(),
            "train": self.cfg.to_dict(),
        }
        if record is not None:
            config["data"] = record
        if self.start is not None:
            config["init_from"] = self.start.record
        return config

    @property
    def epoch(self) -> float:
        """Epochs of the training split read after `step` steps (fractional; `ddm.data.order`)."""
        return self.order.epoch_at(self.step)

    def add_callbacks(self, *callbacks: Callback) -> None:
        """Appends callbacks (they run after those already there)."""
        self.callbacks.extend(callbacks)

    # -- the steps ----------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Trains from `step` to `stop`, running the callbacks; returns the last checkpoint."""
        if self.step >= self.stop and self.env.is_main:
            say(
                f"ddm train: nothing to do: the run in {str(self.run_dir)!r} is at step {self.step}, and "
                f"this run stops at step {self.stop} (steps = {self.cfg.steps}); give a larger --steps to "
                "train on"
            )
        with self._interrupt.installed():
            for cb in self.callbacks:
                cb.on_train_start(self)
            try:
                self.model.train()
                while self.step < self.stop:
                    ddist.maybe_fail("step", self.step)  # test hook (DDM_FAULT)
                    stats = self.train_step()
                    for cb in self.callbacks:
                        cb.on_step_end(self, stats)
                    if stats.interrupted:
                        self._stop_on_interrupt()
            finally:
                for cb in self.callbacks:
                    cb.on_train_end(self)
        if self.last_path is None:  # nothing to do (already at `stop`): make sure a checkpoint exists
            self.save()
        self.finish_pending()
        return self.last_path

    def train_step(self) -> StepStats:
        """One optimizer step over this rank's rows of the global batch of step `self.step`."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k, rows in enumerate(self.rows_per_micro):
            loss_sum += self._micro_batch(rows, last=k == len(self.rows_per_micro) - 1)
        # over all ranks: the global batch's loss, and whether any rank was interrupted
        loss_sum, votes = self.env.sum([loss_sum, float(self._interrupt.requested)], self.device)
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            if cfg.grad_clip > 0
            else 0.0
        )
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        loss = loss_sum / self.tokens_per_step  # nats per token
        if not math.isfinite(loss):
            raise DivergenceError(f"training loss is {loss} at step {self.step}; lower lr or check the data")
        return StepStats(loss=loss, lr=lr, grad_norm=grad_norm, seconds=seconds, interrupted=votes > 0)

    def _micro_batch(self, rows: torch.Tensor, *, last: bool) -> float:
        """Forward and backward of the rows `rows`; returns their summed loss (nats)."""
        cfg = self.cfg
        torch.manual_seed(dropout_seed(cfg.seed, self.step, int(rows[0])))
        x0, masks = self.batch(rows)  # (b, L), and the loss masks of prompt / response pairs
        labels = batch_labels(self.corpus, self.order, cfg, self.step, rows)  # (b,) or None
        self._labels = None if labels is None else labels.to(self.device)
        # gradients are all-reduced only at the last micro-batch
        with self.parallel.sync(self.net, last):
            per_seq = self.sequence_loss(x0, rows, masks)  # (b,)
            # W / B times the sum: after DDP's mean over W ranks, the gradient of the global-batch mean
            (per_seq.sum() * (self.env.world_size / cfg.batch_size)).backward()
        return float(per_seq.detach().sum())

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The clean rows `rows` of this step on the device, `[b, L]`, and their `(noised, scored)` loss
        masks (`ddm.data.pairs`; None for a token stream). With `random_length_fraction`, a step keyed
        by `(seed, step)` has its rows cut to a random length (`ddm.data.pairs.keyed_length`)."""
        cfg = self.cfg
        x0 = self.order.batch(self.step, rows)  # (b, L), keyed by (seed, step, row)
        masks_at = getattr(self.corpus, "masks_at", None)  # a PairCorpus has loss masks
        masks = None if masks_at is None else masks_at(cfg.seq_len, cfg.seed, self.step, rows)
        x0 = x0[:, : keyed_length(cfg.seed, self.step, cfg.random_length_fraction, cfg.seq_len)]
        return x0.to(self.device), None if masks is None else tuple(m.to(self.device) for m in masks)

    def sequence_loss(
        self, x0: torch.Tensor, rows: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The per-sequence loss `[b]` (nats) of the clean rows `x0` (`[b, L]`, global rows `rows`), with
        the `(noised, scored)` masks of prompt / response pairs; scaled by `seq_len / L` for rows cut
        shorter than `seq_len`, so that the Trainer's division by `seq_len` gives nats per token."""
        noised, scored = masks if masks is not None else (None, None)
        if self.objective is None:
            per_seq = sequence_nll(self.net, x0, scored=scored)  # exact -log p(x0) (of the response)
        else:
            fn = with_label_fn(self._model_fn(), self._labels)  # the micro-batch's labels, if any
            per_seq = self.objective.loss(
                fn, self.graph, self.schedule, x0, seed=self.cfg.seed, step=self.step,
                rows=rows, noised=noised, scored=scored,
            )  # fmt: skip
        return per_seq if x0.shape[1] == self.cfg.seq_len else per_seq * (self.cfg.seq_len / x0.shape[1])

    def _model_fn(self) -> Any:
        """The network as the objective calls it (through DDP's forward, so gradients are reduced)."""
        net, kind = self.net, self.cfg.objective
        if kind == "block":  # every block given the clean blocks before it, in one call ([x_t, x0], BD3-LM)
            masked = self.cfg.block_loss == "masked"
            return lambda x, s, x0: net(x, s, log_probs=masked, x0=x0)
        if kind == "masked":  # log p(x0 | x_t)
            return lambda x, s: net(x, s, log_probs=True)
        return net

    def log(self, record: dict[str, Any]) -> None:
        """Hands a log record (`step` and figures) to every callback's `on_log`."""
        for cb in self.callbacks:
            cb.on_log(self, record)

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self) -> Path:
        """Saves a checkpoint of the current step (rank 0 writes it and runs the `on_save` callbacks; every
        rank waits for it) and returns its path."""
        path = self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        extra = {
            "rng": ckpt.rng_state(),
            "data": {"position": self.order.describe(), "order": self.order.name, "step": self.step},
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed,
        }
        if self.cfg.checkpoint_format == "sharded":  # every rank writes its shard (ddm.io.sharded)
            path = self._save_sharded(extra)
        else:  # full tensors (FSDP gathers its shards here, on every rank); rank 0 writes them
            model, ema, optimizer = self.parallel.checkpoint_views(self.model, self.ema, self.optimizer)
            if self.env.is_main:
                path = ckpt.save(
                    self.run_dir,
                    self.step,
                    model=model,
                    config=self.ckpt_config,
                    ema=ema,
                    optimizer=optimizer,
                    state=extra,
                    keep=self.cfg.keep_checkpoints,
                )
        if self.env.is_main:
            for cb in self.callbacks:
                cb.on_save(self, path)
        self.env.barrier()  # no rank runs ahead of a checkpoint
        self.last_path = path
        return path

    def _save_sharded(self, extra: dict[str, Any]) -> Path:
        self.finish_pending()
        write = sharded.save_async if self.cfg.async_save else sharded.save
        kw = {"model": self.model, "ema": self.ema, "optimizer": self.optimizer, "config": self.ckpt_config}
        done = write(self.run_dir, self.step, **kw, state=extra, keep=self.cfg.keep_checkpoints)
        if isinstance(done, sharded.PendingSave):
            self._pending = done
            return done.final
        return done

    def finish_pending(self) -> None:
        """Completes an asynchronous save in flight (every rank calls it), making it the latest."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.wait()

    def resume_command(self) -> str:
        """The shell command that continues this run."""
        procs = f" --nproc {self.env.world_size}" if self.env.enabled else ""
        return f"ddm train --resume --run-dir {shlex.quote(str(self.run_dir.resolve()))}{procs}"

    def _stop_on_interrupt(self) -> None:
        if self.last_path is None or self.last_path.name != f"step_{self.step:08d}":
            self.save()
        self.finish_pending()
        if self.env.is_main:
            say(
                f"ddm train: stopped at step {self.step}; checkpoint {self.last_path}\n"
                f"  resume with: {self.resume_command()}"
            )
        raise KeyboardInterrupt
