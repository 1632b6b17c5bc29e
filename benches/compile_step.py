"""Training step time, eager against torch.compile, on this machine's CPU (one thread).

    PYTHONPATH=python python benches/compile_step.py [--steps N] [--model tiny] [--seq-len L]

Trains the same short run twice (config `compile` off and on) and reports the median step time of the
steps after the first few (compilation happens in the first), with /proc/loadavg.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ddm.training import train
from ddm.training.config import TrainConfig


def run(compiled: bool, steps: int, model: str, tmp: Path, seq_len: int) -> tuple[float, float, float]:
    cfg = TrainConfig(
        run_dir=str(tmp / f"c{int(compiled)}"),
        model=model,
        seq_len=seq_len,
        batch_size=8,
        steps=steps,
        warmup_steps=1,
        log_every=1,
        eval_every=0,
        eval_sequences=1,
        eval_num_t=1,
        save_every=steps,
        plot=False,
        progress=False,
        dropout=0.0,
        compile=compiled,
    )
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in (tmp / f"c{int(compiled)}" / "log.jsonl").read_text().splitlines()]
    secs = [r["elapsed_s"] for r in recs if "loss" in r]
    per_step = [b - a for a, b in zip(secs[:-1], secs[1:], strict=True)][
        3:
    ]  # after compilation (first steps)
    return statistics.median(per_step), wall, [r["loss"] for r in recs if "loss" in r][-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        eager, eager_wall, eager_loss = run(False, args.steps, args.model, Path(d), args.seq_len)
        comp, comp_wall, comp_loss = run(True, args.steps, args.model, Path(d), args.seq_len)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        json.dumps(
            {
                "model": args.model,
                "seq_len": args.seq_len,
                "last_loss_eager": eager_loss,
                "last_loss_compiled": comp_loss,
                "steps": args.steps,
                "eager_step_s": round(eager, 4),
                "compiled_step_s": round(comp, 4),
                "speedup": round(eager / comp, 3),
                "eager_wall_s": round(eager_wall, 1),
                "compiled_wall_s": round(comp_wall, 1),
                "loadavg": load,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
