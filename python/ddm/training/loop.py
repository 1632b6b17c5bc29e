"""Training: the DWDSE loss of SEDD on a text corpus, with checkpoints that resume exactly.

One optimizer step draws `batch_size` blocks of `seq_len` tokens at random offsets of the training split (in
`grad_accum` micro-batches), draws `t ~ U[eps_t, 1]` and `x_t ~ p_{t|0}(. | x0)` per sequence, and minimises
the mean over sequences of `sigma(t) * sum_i DSE_i` (docs/math.md section 4; SEDD eq. 10), with AdamW (or Muon
on the blocks' matrices, `ddm.training.optim`), a linear warm-up then a constant or decaying learning rate
(`lr_at`), gradient clipping and an EMA of the weights. On CUDA the network runs under bf16 autocast, and on a
CPU with native bf16 too when `cpu_bf16` is set; the weights, the optimizer and the score entropy stay in
float32 or wider.

Randomness: the initial weights come from torch's global RNG seeded with `config.seed`; the block
offsets, `t` and `x_t` of row j of the global batch of step s are counter-based draws keyed by
`(seed, s, j)` (`ddm.training.distributed`), so the data position is the step itself and a step's global batch
does not depend on how it is split; dropout reseeds the global RNG per micro-batch from
`(seed, step, first row)`. A run stopped at any checkpoint and resumed gives bit-identical weights to an
uninterrupted run on CPU.

Several processes (`torchrun ... -m ddm train`, or `ddm train --nproc K`) train with
DistributedDataParallel on their rows of each global batch; see `ddm.training.distributed` and
docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ddm import _fs
from ddm.data import load_corpus
from ddm.eval.bound import likelihood_bound
from ddm.eval.metrics import exact_nll
from ddm.io import checkpoint as ckpt
from ddm.model import EMA, ScoreModel
from ddm.model.autoregressive import ARModel, sequence_nll
from ddm.training import distributed as ddist
from ddm.training.config import TrainConfig, load_config, make_graph, make_schedule
from ddm.training.optim import make_optimizer

__all__ = ["RESUME_FIELDS", "lr_at", "train"]

# Fields that define the model, its data and its randomness: a resumed run must keep them.
RESUME_FIELDS = (
    "seed",
    "objective",
    "data",
    "tokenizer",
    "val_fraction",
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


def _as_config(config: TrainConfig | dict | str | os.PathLike) -> TrainConfig:
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a TrainConfig, dict or TOML path, got {type(config).__name__}")


class _Log:
    """Appends JSON lines to `<run_dir>/log.jsonl` (flushed per line) and draws `curves.png`."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / "log.jsonl"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            # keep what the resumed checkpoint had seen; drop lines written after it
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

    def write(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def plot(self, path: Path) -> None:
        try:
            import matplotlib  # optional (the `plot` extra): imported only to draw

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # the plot is optional
            return
        train = [r for r in self.records if "loss" in r]
        evals = [r for r in self.records if "eval_bits_per_token" in r]
        if not train:
            return
        fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1))
        ln2 = math.log(2)
        ax.plot([r["step"] for r in train], [r["loss"] / ln2 for r in train], lw=1, label="training DWDSE")
        if evals:
            ax.errorbar(
                [r["step"] for r in evals],
                [r["eval_bits_per_token"] for r in evals],
                yerr=[2 * r["eval_stderr_bits"] for r in evals],
                fmt="o-",
                ms=3,
                label="held-out bound (EMA, +-2 s.e.)",
            )
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global state that third-party code may use)
    torch.manual_seed(seed)


def train(
    config: TrainConfig | dict | str | os.PathLike,
    *,
    resume: bool = False,
    until_step: int | None = None,
) -> Path:
    """Trains a score model and returns the path of its last checkpoint.

    Args:
        config: a `TrainConfig`, a dict of its fields, or a TOML file.
        resume: continue the run in `config.run_dir` from its latest checkpoint (exactly: the result is
            the same as a run that was never interrupted). The fields in `RESUME_FIELDS` must match the
            checkpoint's; `steps` and the logging fields may change.
        until_step: stop at this step (with a checkpoint) even if `config.steps` is larger, e.g. to split
            a run across jobs; resume later to continue.

    Under torchrun (several processes) every process calls this; rank 0 logs, evaluates and writes the
    checkpoints, and every process returns the path of the last one.

    Returns:
        The checkpoint directory written last.
    """
    cfg = _as_config(config)
    env, device = ddist.init(cfg.device, cfg.dist_timeout)
    try:
        return _train(cfg, env, device, resume=resume, until_step=until_step)
    finally:
        env.shutdown()


def _train(
    cfg: TrainConfig, env: ddist.DistEnv, device: torch.device, *, resume: bool, until_step: int | None
) -> Path:
    run_dir = Path(cfg.run_dir)
    state: dict[str, Any] | None = None
    if resume:
        found = ckpt.latest(run_dir)
        if found is None:
            raise ValueError(f"resume: run directory {str(run_dir)!r} has no checkpoint")
        saved = ckpt.read_config(found)["train"]
        for name in RESUME_FIELDS:
            # a field added after the checkpoint was written (block_size, block_loss) had its default
            if saved.get(name, getattr(TrainConfig, name)) != getattr(cfg, name):
                raise ValueError(
                    f"resume: {name} = {getattr(cfg, name)!r} differs from the checkpoint's "
                    f"{saved.get(name)!r}"
                )
        state = ckpt.read_training_state(found)  # on CPU; load_state_dict moves tensors to the model
    elif ckpt.latest(run_dir) is not None:
        raise ValueError(
            f"run directory {str(run_dir)!r} already has checkpoints: pass resume=True (--resume) to "
            "continue it, or choose another run_dir"
        )

    rows_per_micro = ddist.batch_rows(cfg.batch_size, cfg.grad_accum, env)  # this rank's rows
    _seed_everything(cfg.seed)
    for turn in (True, False):  # rank 0 tokenizes the corpus (or fills its cache) first, then the others
        if env.is_main == turn:
            corpus = load_corpus(
                cfg.data, run_dir / "data", tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction
            )
        env.barrier()
    corpus.check_seq_len(cfg.seq_len)
    tokenizer = corpus.tokenizer
    graph = make_graph(cfg, tokenizer.vocab_size)
    schedule = make_schedule(cfg)
    autoregressive = cfg.objective == "autoregressive"
    if autoregressive:  # the baseline: same blocks, causal, next-token cross-entropy (issue 7)
        model = ARModel(cfg.model_config(), tokenizer.vocab_size, tokenizer=tokenizer).to(device)
    else:
        model = ScoreModel(cfg.model_config(), graph, schedule, tokenizer=tokenizer).to(device)
    model.cpu_bf16 = cfg.cpu_bf16  # takes effect only on a CPU with native bf16 (cpu_has_native_bf16)
    ema = EMA(model, cfg.ema_decay)
    optimizer = make_optimizer(model, cfg)
    step, elapsed, tokens_seen = 0, 0.0, 0
    if state is not None:
        saved_tok = ckpt.read_config(state["path"])["tokenizer"]
        if saved_tok != tokenizer.to_config():
            raise ValueError("resume: the corpus gives a different tokenizer than the checkpoint's")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"], state["ema_num_updates"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        step, elapsed, tokens_seen = state["step"], state.get("elapsed_s", 0.0), state.get("tokens_seen", 0)

    ckpt_config = {
        "objective": cfg.objective,
        "model": model.config.to_dict(),
        "graph": None if autoregressive else graph.to_config(),
        "schedule": None if autoregressive else schedule.to_config(),
        "tokenizer": tokenizer.to_config(),
        "train": cfg.to_dict(),
    }
    log = _Log(run_dir, step if state is not None else None) if env.is_main else None
    val = corpus.val_blocks(cfg.seq_len, cfg.eval_sequences or None) if corpus.n_val >= cfg.seq_len else None
    eval_model = copy.deepcopy(model).eval()

    def evaluate_now() -> dict[str, Any]:
        ema.copy_to(eval_model)
        rows = max(64, cfg.batch_size)  # no gradients: larger batches than training are cheap
        if autoregressive:  # exact NLL, same keys
            b = exact_nll(eval_model, val, batch_size=rows)
        else:
            b = likelihood_bound(eval_model, val, num_t=cfg.eval_num_t, seed=cfg.seed, batch_size=rows)
        return {
            "step": step,
            "eval_nats_per_token": b.nats_per_token,
            "eval_bits_per_token": b.bits_per_token,
            "eval_stderr_bits": b.stderr_bits,
        }

    def save() -> Path:
        extra = {
            "rng": ckpt.rng_state(),
            "data": {"position": "the step: offsets keyed by (seed, step, row)", "step": step},
            "tokens_seen": tokens_seen,
            "elapsed_s": elapsed,
        }
        return ckpt.save(
            run_dir,
            step,
            model=model,
            config=ckpt_config,
            ema=ema,
            optimizer=optimizer,
            state=extra,
            keep=cfg.keep_checkpoints,
        )

    def save_and_wait() -> Path:
        path = run_dir / "checkpoints" / f"step_{step:08d}"
        if env.is_main:
            path = save()
            if cfg.plot:
                log.plot(run_dir / "curves.png")
        env.barrier()  # no rank runs ahead of a checkpoint
        return path

    stop = min(cfg.steps, until_step) if until_step is not None else cfg.steps
    tokens_per_step = cfg.batch_size * cfg.seq_len
    last_path = ckpt.latest(run_dir)
    bar = None
    if cfg.progress and env.is_main:
        from tqdm.auto import tqdm  # on demand: tqdm.auto probes for a notebook when imported

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    net: torch.nn.Module = model
    if env.enabled:  # DDP averages the gradients over the ranks during backward
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    masked = cfg.objective == "masked"
    block = cfg.objective == "block"
    block_masked = block and cfg.block_loss == "masked"

    def log_fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # the masked objective trains log p(x0 | x_t) (through DDP's forward, so gradients are reduced)
        return net(x, s, log_probs=True) if masked else net(x, s)

    def block_fn(x: torch.Tensor, s: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        # block diffusion: every block given the clean blocks before it, in one call ([x_t, x0], BD3-LM)
        return net(x, s, log_probs=block_masked, x0=x0)

    window_loss, window_steps, window_time = 0.0, 0, 0.0
    tok_per_s = 0.0
    model.train()
    while step < stop:
        ddist.maybe_fail("step", step)  # test hook (DDM_FAULT)
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k, rows in enumerate(rows_per_micro):
            torch.manual_seed(ddist.dropout_seed(cfg.seed, step, int(rows[0])))
            x0 = corpus.batch_at(cfg.seq_len, cfg.seed, step, rows).to(device)  # (b, L)
            # gradients are all-reduced only at the last micro-batch
            sync = net.no_sync() if env.enabled and k < len(rows_per_micro) - 1 else contextlib.nullcontext()
            with sync:
                if autoregressive:
                    per_seq = sequence_nll(net, x0)  # (b,) exact -log p(x0), nats
                else:
                    per_seq = ddist.keyed_loss(
                        block_fn if block else log_fn, graph, schedule, x0, seed=cfg.seed, step=step,
                        rows=rows, eps_t=cfg.eps_t, objective=cfg.objective, t_sampling=cfg.t_sampling,
                        batch_size=cfg.batch_size, block_size=cfg.block_size, block_loss=cfg.block_loss,
                    )  # (b,): DWDSE, the masked NELBO, or the block loss  # fmt: skip
                # W / B times the sum: after DDP's mean over W ranks, the gradient of the global-batch mean
                (per_seq.sum() * (env.world_size / cfg.batch_size)).backward()
            loss_sum += float(per_seq.detach().sum())
        (loss_sum,) = env.sum([loss_sum], device)  # over all ranks: the global batch
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if cfg.grad_clip > 0
            else 0.0
        )
        optimizer.step()
        ema.update(model)
        step += 1
        tokens_seen += tokens_per_step
        step_time = time.perf_counter() - t0
        elapsed += step_time
        window_time += step_time
        loss = loss_sum / tokens_per_step  # nats per token
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {step}; lower lr or check the data")
        window_loss += loss
        window_steps += 1

        if step % cfg.log_every == 0 or step == stop:
            tok_per_s = window_steps * tokens_per_step / max(window_time, 1e-9)
            rec = {
                "step": step,
                "loss": window_loss / window_steps,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tok_per_s,
                "elapsed_s": elapsed,
            }
            if log is not None:
                log.write(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tok_per_s:,.0f}", refresh=False)
            window_loss, window_steps, window_time = 0.0, 0, 0.0
        is_eval = val is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps)
        if is_eval and log is not None:
            log.write(evaluate_now())
        if step % cfg.save_every == 0 or step == stop:
            last_path = save_and_wait()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if last_path is None:  # nothing to do (already at `stop`): make sure a checkpoint exists
        last_path = save_and_wait()
    return last_path
