"""Sudoku solve rates: a masked diffusion model (every ddm predictor and order) beside the AR baseline.

Kim et al. 2025 (arXiv 2502.06768): on Sudoku, plain masked-diffusion inference solves few puzzles and
the top-probability-margin order most of them. This script trains both models on the same prompt /
response pairs (`ddm.data.sudoku`) for the same wall clock, then solves the held-out puzzles:

    python benches/sudoku.py data  --blanks 45 --train 20000 --heldout 1000 --out runs/sudoku/pairs.jsonl
    python benches/sudoku.py train --data runs/sudoku/pairs.jsonl --heldout 1000 --objective masked \\
        --minutes 60 --run-dir runs/sudoku/ddm
    python benches/sudoku.py train --data runs/sudoku/pairs.jsonl --heldout 1000 --objective autoregressive \\
        --minutes 60 --run-dir runs/sudoku/ar
    python benches/sudoku.py eval --ddm runs/sudoku/ddm --ar runs/sudoku/ar --data runs/sudoku/pairs.jsonl \\
        --heldout 1000 --out docs/quality_results/sudoku/results.json

A puzzle counts as solved when the response is a complete valid grid that keeps the givens
(`ddm.data.sudoku.check`); the fraction of blank cells filled right is reported too. The ddm model
answers with `ddm.sample(prompt=[...])` (each row its own 81 givens, `--batch` puzzles per call); the AR
model decodes greedily in row-major order. Same puzzles.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import ddm
import torch
from ddm.data.pairs import read_jsonl_pairs
from ddm.data.sudoku import BLANK, check, make_puzzles
from ddm.training import train
from ddm.training.trainer import Callback

# the ddm decoders compared: (name, sample keywords); one token per call unless the predictor decides
DECODERS = {
    "margin": dict(predictor="confidence", order="margin", tokens_per_step=1),
    "confidence": dict(predictor="confidence", order="confidence", tokens_per_step=1),
    "entropy": dict(predictor="confidence", order="entropy", tokens_per_step=1),
    "random (plain)": dict(predictor="confidence", order="random", tokens_per_step=1),
    "first_hitting": dict(predictor="first_hitting"),
    "analytic": dict(predictor="analytic"),
}


def _load(path: str) -> list[tuple[str, str]]:
    return read_jsonl_pairs(path)


def cmd_data(a: argparse.Namespace) -> None:
    pairs = make_puzzles(a.seed, a.train + a.heldout, a.blanks)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for p, r in pairs:
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    print(f"{len(pairs)} puzzles with {a.blanks} blanks in {a.out}")


class StopAfter(Callback):
    """Ends the run (with a checkpoint) once its wall clock passes `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, trainer, stats) -> None:
        if trainer.elapsed >= self.seconds and trainer.step < trainer.stop:
            trainer.save()
            trainer.stop = trainer.step


def cmd_train(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    total = len(_load(a.data))
    cfg = dict(
        run_dir=a.run_dir, data=a.data, pairs=True, seq_len=163, objective=a.objective, model=a.model,
        val_fraction=a.heldout / total, steps=a.max_steps, batch_size=a.batch_size, lr=a.lr,
        warmup_steps=a.warmup, dropout=0.0, eval_every=0, eval_sequences=64, eval_num_t=4,
        save_every=10**9, log_every=20, plot=False, seed=a.seed, lr_decay="constant", ema_decay=a.ema,
    )  # fmt: skip
    if a.objective != "autoregressive":
        cfg["time_conditioning"] = False  # absorbing, time-independent (the SUBS output of MDLM)
    t0 = time.time()
    path = train(cfg, callbacks=[StopAfter(60 * a.minutes)])
    print(f"trained {a.objective} for {time.time() - t0:.0f} s: {path}")


def _ddm_solve(model, prompts, decoder: dict, seed: int, batch: int) -> tuple[list[str], float]:
    """The responses of `ddm.sample(prompt=[...])`, `batch` puzzles per call (each row its own prompt),
    and the network calls per puzzle (every call evaluates each row of its batch once)."""
    responses, calls = [], 0
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo : lo + batch]
        x, stats = ddm.sample(
            model, 82, prompt=chunk, max_new_tokens=82, seed=seed + lo, return_stats=True, **decoder
        )
        responses += [model.tokenizer.decode(r[:81].tolist()) for r in x]
        calls += stats.network_calls * len(chunk)
    return responses, calls / len(prompts)


def _cells(prompts: list[str], responses: list[str]) -> float:
    """The fraction of blank cells filled with the right digit (the solution is unique)."""
    right = total = 0
    for p, r in zip(prompts, responses, strict=True):
        solution = _solutions[p]
        for k, ch in enumerate(p):
            if ch == BLANK:
                total += 1
                right += k < len(r) and r[k] == solution[k]
    return right / max(total, 1)


_solutions: dict[str, str] = {}


@torch.no_grad()
def _ar_solve(model, prompts) -> list[str]:
    tok = model.tokenizer
    x = torch.tensor([tok.encode(p) + [0] * 82 for p in prompts])  # (B, 163)
    for i in range(81, 163):
        logits = model(x[:, : i + 1])  # row i: the law of x_i given x_<i
        x[:, i] = logits[:, i].argmax(-1)
    return [tok.decode(r[81:162].tolist()) for r in x]


def cmd_eval(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    pairs = _load(a.data)[-a.heldout :][: a.puzzles]
    prompts = [p for p, _ in pairs]
    _solutions.update(pairs)
    rows = []
    if a.ar:
        t0 = time.time()
        ar = ddm.load(a.ar)
        responses = _ar_solve(ar, prompts)
        solved = sum(check(p, r) for p, r in zip(prompts, responses, strict=True))
        rows.append(dict(model="AR (row-major, greedy)", decoder="greedy", solved=solved,
                         puzzles=len(prompts), calls_per_puzzle=82, seconds=time.time() - t0,
                         blank_cell_accuracy=_cells(prompts, responses)))  # fmt: skip
        print(rows[-1], flush=True)
    model = ddm.load(a.ddm) if a.ddm else None
    for name in a.decoders.split(",") if model is not None else []:
        t0 = time.time()
        responses, calls = _ddm_solve(model, prompts, DECODERS[name], a.seed, a.batch)
        solved = sum(check(p, r) for p, r in zip(prompts, responses, strict=True))
        rows.append(dict(model="ddm masked", decoder=name, solved=solved, puzzles=len(prompts),
                         calls_per_puzzle=calls, seconds=time.time() - t0,
                         blank_cell_accuracy=_cells(prompts, responses)))  # fmt: skip
        print(rows[-1], flush=True)
    for r in rows:
        r["solve_rate"] = r["solved"] / r["puzzles"]
    result = dict(
        rows=rows, command=" ".join(sys.argv), loadavg=Path("/proc/loadavg").read_text().split()[:3],
        ddm=a.ddm, ar=a.ar, data=a.data, cpu_count=os.cpu_count(),
    )  # fmt: skip
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--blanks", type=int, default=45)
    d.add_argument("--train", type=int, default=20000)
    d.add_argument("--heldout", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--heldout", type=int, default=1000)
    t.add_argument("--objective", default="masked")
    t.add_argument("--model", default="tiny")
    t.add_argument("--minutes", type=float, default=60)
    t.add_argument("--max-steps", type=int, default=10**6)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--ema", type=float, default=0.999)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--run-dir", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--ddm")
    e.add_argument("--ar")
    e.add_argument("--data", required=True)
    e.add_argument("--heldout", type=int, default=1000)
    e.add_argument("--puzzles", type=int, default=1000)
    e.add_argument("--decoders", default=",".join(DECODERS))
    e.add_argument("--batch", type=int, default=100, help="puzzles per ddm.sample call")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out")
    a = p.parse_args()
    {"data": cmd_data, "train": cmd_train, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
