"""Recipes at equal training wall clock on Shakespeare: SEDD's recipe, ddm's, and the AR baseline (issue 18).

The setup of issue 18: the 3.6M-parameter DiT (hidden 256, 4 heads, 4 blocks, cond 64), L = 256 characters,
batch 32, dropout 0, on the registry's `shakespeare` dataset (38 plays train; Troilus and Cressida and
Twelfth Night are the held-out validation split; The Two Gentlemen of Verona and The Winter's Tale, the
test split, are the second text).

Equal wall clock on a shared machine (`_budget.py`): a probe first times each recipe's optimizer step side
by side (`--probe-steps` steps each after a warm-up, in alternating rounds, medians), then each recipe
trains for `budget / (seconds per step)` steps, one after the other. So the step counts are those of an
equal budget on this machine even if the load changes later, and a run's bound does not depend on the load
during it.

Scores: `likelihood_bound` (the AR model: its exact NLL) on `--windows` evenly spread 256-character windows
of each text, `--num-t` times per window. One JSON line per recipe, and the probe, to `--out`.

Usage: `python benches/budget_compare.py --budget 600 --out budget.jsonl [--recipes sedd,ddm,ar]`; with
`--recipes sedd,ddm,ddm-b16 --train ddm-b16` all three are probed side by side and one is trained.
Recipes: `sedd`, `ddm`, `ar`, their half-batch variants `ddm-b16` and `ar-b16`, and `ddm-masks` and
`ddm-b16-masks` (ddm's with `t_sampling="masks"`), and `-muon` variants of `ddm-masks`, `ar`, `ddm-b16-masks`
and `ar-b16` (`optimizer="muon"`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import ddm
import torch
from _budget import seconds_per_step, steps_for
from ddm.data import load_corpus
from ddm.data.registry import tokens
from ddm.eval import likelihood_bound
from ddm.eval.metrics import exact_nll
from ddm.training import TrainConfig, train

SETUP = dict(
    data="shakespeare",
    model="tiny",
    hidden=256,
    heads=4,
    blocks=4,
    cond_dim=64,
    seq_len=256,
    batch_size=32,
    dropout=0.0,
    eval_every=0,
    log_every=10,
    progress=False,
    plot=False,
)
RECIPES = {
    # SEDD's: the score-entropy loss on a time-conditioned network, constant lr after warm-up, float32
    # (the reference recipe: AdamW 1e-3, warm-up 200, EMA 0.999)
    "sedd": dict(objective="diffusion", lr=1e-3, warmup_steps=200, ema_decay=0.999),
    # ddm's (docs/quality_results/objectives.md): the masked NELBO on a time-independent network, lr 2e-3
    # (a cosine decay was worse at these budgets), EMA 0.99, bf16 where the CPU has it natively
    "ddm": dict(
        objective="masked", time_conditioning=False, lr=2e-3, warmup_steps=100, ema_decay=0.99, cpu_bf16=True
    ),
    # the autoregressive baseline, same network size and budget, with ddm's optimiser settings
    "ar": dict(objective="autoregressive", lr=2e-3, warmup_steps=100, ema_decay=0.99, cpu_bf16=True),
}
# ddm's and AR's with half the batch: twice the steps in the same time, while the loss still falls fast
RECIPES.update({f"{n}-b16": {**RECIPES[n], "batch_size": 16} for n in ("ddm", "ar")})
# ddm's with the masks design's training times (`t_sampling="masks"`: no 1/t tail in the loss)
RECIPES.update({f"{n}-masks": {**RECIPES[n], "t_sampling": "masks"} for n in ("ddm", "ddm-b16")})
# with Muon on the blocks' matrices (AdamW on the rest, the same lr: ddm.training.optim)
RECIPES.update(
    {f"{n}-muon": {**RECIPES[n], "optimizer": "muon"} for n in ("ddm-masks", "ar", "ddm-b16-masks", "ar-b16")}
)


def windows(stream: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """`count` windows of `length` tokens evenly spread over a 1-D token stream, `[count, length]`."""
    starts = torch.linspace(0, len(stream) - length, count).long()
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per recipe")
    ap.add_argument("--recipes", default="sedd,ddm,ar", help=f"to probe, among {', '.join(RECIPES)}")
    ap.add_argument("--train", default="", help="of those, the ones to train and score (default: all)")
    ap.add_argument("--out-dir", default="/tmp/budget")
    ap.add_argument("--out", default="", help="append JSON lines here")
    ap.add_argument("--probe-steps", type=int, default=6)
    ap.add_argument("--probe-rounds", type=int, default=2)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--num-t", type=int, default=128)
    args = ap.parse_args()
    names = [n for n in args.recipes.split(",") if n]
    out_dir = Path(args.out_dir)

    def emit(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")

    load0 = os.getloadavg()
    configs = {n: {**SETUP, **RECIPES[n]} for n in names}
    s_per_step = seconds_per_step(configs, out_dir, args.probe_steps, args.probe_rounds)
    emit(dict(probe_s_per_step=s_per_step, load_start=load0, load_end=os.getloadavg()))
    corpus = load_corpus("shakespeare", out_dir / "data")
    texts = {
        "heldout": torch.as_tensor(corpus.val_tokens.astype("int64")),
        "second": torch.as_tensor(tokens("shakespeare", "test").astype("int64")),
    }
    for name in [n for n in args.train.split(",") if n] or names:
        if name not in names:
            raise SystemExit(f"--train {name}: not among --recipes {args.recipes}")
        steps = steps_for(args.budget, s_per_step[name])
        run = out_dir / name
        shutil.rmtree(run, ignore_errors=True)
        cfg = TrainConfig.from_dict(
            {**SETUP, **RECIPES[name], "run_dir": str(run), "steps": steps, "save_every": steps}
        )
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        ckpt = train(cfg)
        wall = time.perf_counter() - t0
        model = ddm.load(ckpt)
        rec: dict = dict(recipe=name, overrides=RECIPES[name], steps=steps, train_s=round(wall, 1))
        for text, stream in texts.items():
            blocks = windows(stream, args.windows, cfg.seq_len)
            if RECIPES[name]["objective"] == "autoregressive":
                b = exact_nll(model, blocks, batch_size=64)
            else:
                b = likelihood_bound(model, blocks, num_t=args.num_t, seed=0, batch_size=128)
            rec[text] = dict(bits=round(b.bits_per_token, 4), stderr=round(b.stderr_bits, 4))
        rec.update(load_start=load0, load_end=os.getloadavg(), threads=torch.get_num_threads())
        emit(rec)


if __name__ == "__main__":
    main()
