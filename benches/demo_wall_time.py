"""`make demo`'s wall time against the demo as it was when issue 18 was filed, side by side (issue 18).

Runs `ddm.demo.main` in fresh run directories with the old demo's configuration and sampler (320 steps of
the DWDSE on the time-conditioned tiny model in float32, lr 1e-3, the default sampler: `ddm.demo` at
commit dd777c1) and with today's, one after the other (`--rounds 2`: old, new, new, old), and prints each
run's wall time from the start of training to the last sample, and the load average. Both use this
checkout's code, so the old configuration gets today's fused AdamW too: this compares the recipes.

Usage: `python benches/demo_wall_time.py [--rounds 1] [--out-dir /tmp/demo_wall]`
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path

import ddm.demo as demo

OLD_CONFIG = dict(
    run_dir="runs/demo",
    model="tiny",
    seq_len=128,
    batch_size=32,
    steps=320,
    lr=1e-3,
    warmup_steps=30,
    dropout=0.0,
    ema_decay=0.99,
    objective="diffusion",
    time_conditioning=True,
    cpu_bf16=False,
    eval_every=0,
    log_every=10,
    save_every=100,
    eval_sequences=16,
    eval_num_t=8,
)
OLD_SAMPLER: dict = {}  # `ddm.sample`'s defaults


def run(name: str, config: dict, sampler: dict, run_dir: Path) -> dict:
    saved = demo.DEMO_CONFIG, demo.DEMO_SAMPLER
    demo.DEMO_CONFIG, demo.DEMO_SAMPLER = config, sampler
    out = io.StringIO()
    load = os.getloadavg()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            demo.main(["--run-dir", str(run_dir), "--fresh"])
    finally:
        demo.DEMO_CONFIG, demo.DEMO_SAMPLER = saved
    wall = time.perf_counter() - t0
    lines = out.getvalue().splitlines()
    pick = {
        k: next((ln for ln in lines if ln.startswith(k)), "")
        for k in ("trained in", "held-out", "real words")
    }
    return {"demo": name, "wall_s": round(wall, 1), **pick, "load_start": load, "load_end": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="1: old, new; 2: old, new, new, old")
    ap.add_argument("--out-dir", default="/tmp/demo_wall")
    args = ap.parse_args()
    old, new = ("old", OLD_CONFIG, OLD_SAMPLER), ("new", demo.DEMO_CONFIG, demo.DEMO_SAMPLER)
    # old, new, new, old, ...: a drift in the load falls on both
    plan = [(old, new, new, old)[i % 4] for i in range(2 * args.rounds)]
    for k, (name, config, sampler) in enumerate(plan):
        print(json.dumps(run(name, config, sampler, Path(args.out_dir) / f"{name}{k}")), flush=True)


if __name__ == "__main__":
    main()
