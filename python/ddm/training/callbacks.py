"""What a training run does around its steps, one callback each: the log file, the console, the held-out
evaluation, the checkpoints and the plot (minGPT's and Lightning's callbacks are the model).

A `ddm.training.trainer.Callback` overrides any of five hooks, each called with the `Trainer` in the order
of `Trainer.callbacks`: `on_train_start`, `on_step_end(stats)` after every optimizer step,
`on_log(record)` for every line of the log (`Trainer.log`), `on_save(path)` after a checkpoint is written
(rank 0 only), and `on_train_end`. A new training feature is a callback passed to
`ddm.training.train(..., callbacks=[...])`, not a branch in the loop. `default_callbacks` builds the run's
own.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ddm import _fs
from ddm._stats import error_bar, format_stderr
from ddm.eval.bound import conditional_bound, likelihood_bound
from ddm.eval.metrics import exact_nll
from ddm.io import run
from ddm.model.autoregressive import sequence_nll
from ddm.model.transformer import bf16_autocast_on
from ddm.training.heldout import evaluation_due, heldout_callbacks
from ddm.training.trainer import Callback, StepStats, Trainer, say

__all__ = [
    "Checkpointing",
    "Console",
    "Evaluation",
    "JsonlLog",
    "Plotting",
    "Summary",
    "TrainMetrics",
    "default_callbacks",
]


class JsonlLog(Callback):
    """Appends every record to `<run_dir>/log.jsonl` (flushed per line). On resume it keeps the records
    up to the resumed step and drops those written after it."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run.log_path(run_dir)
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= resume_step:
                    self.records.append(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:
            for rec in self.records:
                f.write(json.dumps(rec) + "\n")

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TrainMetrics(Callback):
    """Every `log_every` steps (and at the last), logs the mean training loss (nats per token) of the
    steps since the last record, the learning rate, the gradient norm and the throughput."""

    def __init__(self) -> None:
        self.loss, self.steps, self.time = 0.0, 0, 0.0

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        self.loss += stats.loss
        self.steps += 1
        self.time += stats.seconds
        if trainer.step % trainer.cfg.log_every and trainer.step != trainer.stop:
            return
        tok_per_s = self.steps * trainer.tokens_per_step / max(self.time, 1e-9)
        record = {
            "step": trainer.step,
            "loss": self.loss / self.steps,
            "lr": stats.lr,
            "grad_norm": stats.grad_norm,
            "tokens_per_s": tok_per_s,
            "elapsed_s": trainer.elapsed,
            "epoch": trainer.epoch,
            "tokens_seen": trainer.tokens_seen,
        }
        self.loss, self.steps, self.time = 0.0, 0, 0.0
        trainer.log(record)


class Evaluation(Callback):
    """Every `eval_every` steps, every `eval_every_epochs` epochs and at the last, logs the held-out bound
    of the EMA weights (the exact NLL for the autoregressive baseline) on `eval_sequences` blocks of the
    held-out tail. A held-out split shorter than `seq_len` is said once: the run then never evaluates."""

    def __init__(self, trainer: Trainer) -> None:
        cfg, corpus = trainer.cfg, trainer.corpus
        self.val = (
            corpus.val_blocks(cfg.seq_len, cfg.eval_sequences or None)
            if corpus.n_val >= cfg.seq_len
            else None
        )
        if self.val is None and corpus.n_val > 0:
            say(
                f"ddm train: warning: the held-out split has {corpus.n_val} tokens, fewer than seq_len = "
                f"{cfg.seq_len}: the held-out bound is never evaluated (raise val_fraction, or use a "
                "longer corpus)"
            )
        self.eval_model = trainer.parallel.eval_copy(trainer.model, trainer.new_model).eval()
        val_masks = getattr(corpus, "val_masks", None)  # pairs: the bound of the response given the prompt
        self.scored = None
        if self.val is not None and val_masks is not None:
            self.scored = val_masks(cfg.seq_len, cfg.eval_sequences or None)[0]

    def due(self, trainer: Trainer) -> bool:
        """Whether the step just reached is evaluated."""
        return self.val is not None and evaluation_due(trainer)

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if self.due(trainer):
            trainer.log(self.evaluate(trainer))

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        """The evaluation record of the current EMA weights."""
        cfg = trainer.cfg
        trainer.ema.copy_to(self.eval_model)
        rows = max(64, cfg.batch_size)  # no gradients: larger batches than training are cheap
        if self.scored is not None:
            return self._conditional(trainer, rows)
        if trainer.autoregressive:  # exact NLL, same keys
            b = exact_nll(self.eval_model, self.val, batch_size=rows)
        else:
            b = likelihood_bound(
                self.eval_model, self.val, num_t=cfg.eval_num_t, seed=cfg.seed, batch_size=rows
            )
        return {
            "step": trainer.step,
            "eval_nats_per_token": b.nats_per_token,
            "eval_bits_per_token": b.bits_per_token,
            "eval_stderr_bits": b.stderr_bits,
            "epoch": trainer.epoch,
            "tokens_seen": trainer.tokens_seen,
        }

    def _conditional(self, trainer: Trainer, rows: int) -> dict[str, Any]:
        """Prompt / response pairs: the bound of the noised positions (response and EOS padding) given
        the prompt (the exact NLL for the autoregressive baseline), per scored token."""
        cfg = trainer.cfg
        if trainer.autoregressive:
            with torch.no_grad():
                nats = sequence_nll(self.eval_model, self.val, scored=self.scored) / cfg.seq_len
            tokens = self.scored.sum(-1).double()
            nats, var = float((nats.double() * tokens).sum() / tokens.sum()), 0.0
        else:
            b = conditional_bound(
                self.eval_model, self.val, self.scored, num_t=cfg.eval_num_t, seed=cfg.seed, batch_size=rows
            )
            tokens = float(b.tokens.sum())
            nats, var = float(b.nats.sum()) / tokens, float((b.mc_stderr.nan_to_num() ** 2).sum()) / tokens**2
        return {
            "step": trainer.step,
            "eval_nats_per_token": nats,
            "eval_bits_per_token": nats / math.log(2),
            "eval_stderr_bits": math.sqrt(var) / math.log(2),
        }


class EvaluationPeer(Evaluation):
    """A rank other than 0 of a sharded (FSDP) run: at each evaluation it takes part in gathering the EMA
    shards (a collective) for rank 0's evaluation, without a model copy or a bound of its own."""

    def __init__(self, trainer: Trainer) -> None:
        self.val = True if trainer.corpus.n_val >= trainer.cfg.seq_len else None  # whether rank 0 evaluates

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if self.due(trainer):
            trainer.parallel.join_evaluation(trainer.ema)


class Checkpointing(Callback):
    """Saves a checkpoint every `save_every` steps and at the last step (on every rank: rank 0 writes,
    the others wait for it)."""

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if trainer.step % trainer.cfg.save_every == 0 or trainer.step == trainer.stop:
            trainer.save()


class Plotting(Callback):
    """Draws `<run_dir>/curves.png` (training loss, held-out bound, learning rate) after each checkpoint;
    without matplotlib it says so once and draws nothing."""

    def __init__(self, log: JsonlLog) -> None:
        self.log = log
        self.missing = False

    def on_save(self, trainer: Trainer, path: Path) -> None:
        if self.missing:
            return
        try:
            import matplotlib  # optional (the `plot` extra): imported only to draw

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # after the backend is chosen, as matplotlib requires
        except ImportError:
            self.missing = True
            say("ddm train: matplotlib is not installed: curves.png is not drawn (pip install 'ddm[plot]')")
            return
        draw_curves(plt, self.log.records, trainer.run_dir / "curves.png")


def draw_curves(plt: Any, records: list[dict[str, Any]], path: Path) -> None:
    """The training loss and the held-out bound in bits per token over the steps, and the learning rate
    below, written to `path` (atomically)."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_bits_per_token" in r]
    if not train:
        return
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1))
    ln2 = math.log(2)
    ax.plot([r["step"] for r in train], [r["loss"] / ln2 for r in train], lw=1, label="training DWDSE")
    if evals:
        ax.errorbar(
            [r["step"] for r in evals],
            [r["eval_bits_per_token"] for r in evals],
            yerr=[error_bar(r["eval_stderr_bits"]) for r in evals],
            fmt="o-",
            ms=3,
            label="held-out bound (EMA, +-2 s.e.)",
        )
        best = min(evals, key=lambda r: r["eval_bits_per_token"])
        ax.plot(best["step"], best["eval_bits_per_token"], "*", ms=12, color="C3", label="best held-out")
    _epoch_and_token_axes(ax, ax_lr, train[-1])
    ax.set_ylabel("bits / token")
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    with _fs.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _epoch_and_token_axes(ax: Any, ax_lr: Any, last: dict[str, Any]) -> None:
    """Epochs on the top axis and tokens seen under the bottom one: both are linear in the step (the
    ratios of the last training record), so the held-out curve reads against either."""
    step = last["step"]
    if not step or "epoch" not in last:
        return
    per_epoch, per_token = last["epoch"] / step, last["tokens_seen"] / step
    top = ax.secondary_xaxis("top", functions=(lambda s: s * per_epoch, lambda e: e / per_epoch))
    top.set_xlabel("epoch")
    low = ax_lr.secondary_xaxis(-0.6, functions=(lambda s: s * per_token, lambda t: t / per_token))
    low.set_xlabel("tokens seen")


class Summary(Callback):
    """Prints what the run is about to do: parameters, vocabulary, train and held-out tokens, device,
    precision and steps per epoch."""

    def on_train_start(self, trainer: Trainer) -> None:
        cfg, corpus = trainer.cfg, trainer.corpus
        params = sum(p.numel() for p in trainer.model.parameters())
        bf16 = bf16_autocast_on(trainer.device.type, cfg.bf16, cfg.cpu_bf16)
        procs = f", {trainer.env.world_size} processes" if trainer.env.enabled else ""
        say(
            f"ddm train: {cfg.objective} model, {params:,} parameters, "
            f"vocabulary {corpus.tokenizer.vocab_size}\n"
            f"  data:      {cfg.data}: {corpus.n_train:,} train and {corpus.n_val:,} held-out tokens\n"
            f"  device:    {trainer.device} ({'bf16 autocast' if bf16 else 'float32'}){procs}\n"
            f"  steps:     {trainer.step} -> {trainer.stop} of {cfg.batch_size} x {cfg.seq_len} tokens, "
            f"{trainer.order.samples_per_epoch / cfg.batch_size:,.1f} steps per epoch ({trainer.order.name} "
            f"order){f', {cfg.epochs:g} epochs' if cfg.epochs else ''}\n"
            f"  run:       {trainer.run_dir}"
        )


class Console(Callback):
    """Shows progress on stderr: a bar on a terminal, else one line per training record; and the held-out
    bound whenever it is evaluated."""

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if self.terminal and trainer.step < trainer.stop:
            from tqdm.auto import tqdm  # on demand: tqdm.auto probes for a notebook when imported

            self.bar = tqdm(
                total=trainer.cfg.steps, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True
            )

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if "eval_bits_per_token" in record:
            what = "held-out NLL" if trainer.autoregressive else "held-out bound"
            self._line(
                f"step {record['step']}: {what} {record['eval_bits_per_token']:.4f} +- "
                f"{format_stderr(record['eval_stderr_bits'])} bits/token (EMA weights)"
            )
        elif self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False
            )
        else:
            self._line(
                f"step {record['step']}/{trainer.stop}: loss {record['loss']:.4f} nats/token, lr "
                f"{record['lr']:.3g}, {record['tokens_per_s']:,.0f} tokens/s"
            )

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            say(text)

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The run's own callbacks, in their order: rank 0 logs, evaluates, plots and shows progress; every
    rank takes part in the checkpoints."""
    if not trainer.env.is_main:  # a sharded model's evaluation gathers the EMA: every rank takes part
        peers = [EvaluationPeer(trainer)] if trainer.parallel.sharded else []
        return [*peers, Checkpointing(), *heldout_callbacks(trainer, None)]
    cfg = trainer.cfg
    log = JsonlLog(trainer.run_dir, trainer.step if trainer.resumed else None)
    callbacks: list[Callback] = [log, TrainMetrics(), Evaluation(trainer), Checkpointing()]
    callbacks += heldout_callbacks(trainer, log.records)  # best/ and early stopping
    if cfg.plot:
        callbacks.append(Plotting(log))
    if cfg.progress:
        callbacks += [Summary(), Console()]
    return callbacks
