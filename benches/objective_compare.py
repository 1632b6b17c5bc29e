"""The absorbing objectives side by side at equal steps, on the bundled Hamlet with the demo's recipe.

Trains, one after the other with the same seed, the demo configuration (`ddm.demo.DEMO_CONFIG`) with the
DWDSE, with the masked-diffusion NELBO, with the NELBO and stratified or masks times, and with both
objectives on a time-independent network, then prints the held-out
bound of each (64 t per block) with its wall time and the load average. Minutes per run on 2 idle cores.

Usage: `python benches/objective_compare.py [--steps 320] [--out-dir /tmp/objcmp] [--runs dwdse,masked,...]`
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ddm
from ddm.data import load_corpus
from ddm.demo import DEMO_CONFIG
from ddm.eval import likelihood_bound
from ddm.training import TrainConfig, train

# Each run names its objective, time input and learning rate, so that the rows do not move when the demo's
# own recipe changes (the rows of docs/quality_results/objectives.md were measured at lr 1e-3 in float32).
BASE = {
    "hidden": 0,  # the tiny model's own width (192), which the demo had then
    "objective": "diffusion",
    "time_conditioning": True,
    "t_sampling": "uniform",
    "lr": 1e-3,
    "cpu_bf16": False,
}
RUNS = {
    "dwdse": {},
    "masked": {"objective": "masked"},
    "masked+stratified": {"objective": "masked", "t_sampling": "stratified"},
    # the time-independent network (RADD: the absorbing score factors into a sigma scale and a
    # conditional that needs no time input; docs/math.md section 4)
    "dwdse+time-independent": {"time_conditioning": False},
    "masked+time-independent": {"objective": "masked", "time_conditioning": False},
    # the masks design of the training times (masked count first, its time given the count, weighted)
    "masked+masks": {"objective": "masked", "t_sampling": "masks"},
    "masked+time-independent+masks": {
        "objective": "masked",
        "time_conditioning": False,
        "t_sampling": "masks",
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=320, help="the demo's steps when the rows were measured")
    ap.add_argument("--out-dir", default="/tmp/objcmp")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, among {', '.join(RUNS)}")
    args = ap.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        ap.error(f"unknown runs {unknown}; known: {list(RUNS)}")
    for name in names:
        over = RUNS[name]
        run = Path(args.out_dir) / name
        cfg = {**DEMO_CONFIG, "run_dir": str(run), "steps": args.steps, "progress": False, "plot": False}
        t0 = time.time()
        ckpt = train(TrainConfig.from_dict({**cfg, **BASE, **over}))
        wall = time.time() - t0
        model = ddm.load(ckpt)
        val = load_corpus("hamlet", run / "data", tokenizer="char", val_fraction=0.1).val_blocks(128)
        b = likelihood_bound(model, val, num_t=64, seed=0, batch_size=128)
        rec = dict(bits=b.bits_per_token, stderr=b.stderr_bits, wall_s=wall, load=os.getloadavg()[0])
        print(name, json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
