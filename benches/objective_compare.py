"""The absorbing objectives side by side at equal steps, on the bundled Hamlet with the demo's recipe.

Trains, one after the other with the same seed, the demo configuration (`ddm.demo.DEMO_CONFIG`) with the
DWDSE, with the masked-diffusion NELBO, and with the NELBO and stratified times, then prints the held-out
bound of each (64 t per block) with its wall time and the load average. Minutes per run on 2 idle cores.

Usage: `python benches/objective_compare.py [--steps 320] [--out-dir /tmp/objcmp]`
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

RUNS = {
    "dwdse": {},
    "masked": {"objective": "masked"},
    "masked+stratified": {"objective": "masked", "t_sampling": "stratified"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=DEMO_CONFIG["steps"])
    ap.add_argument("--out-dir", default="/tmp/objcmp")
    args = ap.parse_args()
    for name, over in RUNS.items():
        run = Path(args.out_dir) / name
        cfg = {**DEMO_CONFIG, "run_dir": str(run), "steps": args.steps, "progress": False, "plot": False}
        t0 = time.time()
        ckpt = train(TrainConfig.from_dict({**cfg, **over}))
        wall = time.time() - t0
        model = ddm.load(ckpt)
        val = load_corpus("hamlet", run / "data", tokenizer="char", val_fraction=0.1).val_blocks(128)
        b = likelihood_bound(model, val, num_t=64, seed=0, batch_size=128)
        rec = dict(bits=b.bits_per_token, stderr=b.stderr_bits, wall_s=wall, load=os.getloadavg()[0])
        print(name, json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
