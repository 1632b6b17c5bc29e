"""Training step time of one process, FSDP (`parallel = "fsdp"`, a one-rank group) against plain (DDP's
single-process path), on this CPU with one thread.

    PYTHONPATH=python OMP_NUM_THREADS=1 python benches/fsdp_overhead.py [--steps N] [--seq-len L]

Trains the same short run with each, alternating twice, and reports the median step time after the
first two steps, with /proc/loadavg.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from ddm.training import train
from ddm.training.config import TrainConfig


def step_times(parallel: str, steps: int, model: str, seq_len: int, run_dir: Path) -> list[float]:
    cfg = TrainConfig(
        run_dir=str(run_dir),
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
        parallel=parallel,
    )
    train(cfg)
    recs = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    secs = [r["elapsed_s"] for r in recs if "loss" in r]
    return [b - a for a, b in zip(secs[:-1], secs[1:], strict=True)][2:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"ddp": [], "fsdp": []}
    with tempfile.TemporaryDirectory() as d:
        for turn in range(2):
            for parallel in times:
                run_dir = Path(d) / f"{parallel}{turn}"
                times[parallel] += step_times(parallel, args.steps, args.model, args.seq_len, run_dir)
    plain, fsdp = statistics.median(times["ddp"]), statistics.median(times["fsdp"])
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        json.dumps(
            {
                "model": args.model,
                "seq_len": args.seq_len,
                "plain_step_s": round(plain, 4),
                "fsdp_step_s": round(fsdp, 4),
                "fsdp_over_plain": round(fsdp / plain, 3),
                "loadavg": load,
            }
        )
    )


if __name__ == "__main__":
    main()
