"""Block diffusion (issue 15) at equal training steps, i.e. equal training tokens (BD3-LM's comparison).

`block_compare.py` gives each model the same wall clock, so a block model with a clean copy (`[x_t, x_0]`,
2L tokens per pass) gets about half the steps of the one-block model. This trains the named models of
`block_compare.RUNS` for the same `--steps` with the same recipe and seed, and scores them exactly as
`block_compare.py` does (the first `--eval-blocks` held-out blocks of 128, 8 t each; the AR model by its
exact NLL), so its rows sit in the same table.

Usage: `python benches/block_equal_steps.py --steps 542 --runs block128 [--out-dir /tmp/blockeq]`
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import ddm
import torch
from block_compare import RUNS, _train
from ddm.data import load_corpus
from ddm.eval import likelihood_bound
from ddm.eval.metrics import exact_nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--runs", default="block128", help=f"among {', '.join(RUNS)}")
    ap.add_argument("--out-dir", default="/tmp/blockeq")
    ap.add_argument("--eval-blocks", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out_dir)
    corpus = load_corpus("hamlet", out / "data", tokenizer="char", val_fraction=0.1)
    val = corpus.val_blocks(128)[: args.eval_blocks]
    for name in [n for n in args.runs.split(",") if n]:
        load0 = os.getloadavg()[0]
        model = ddm.load(_train(out / name, RUNS[name], args.steps))
        if name == "ar":
            b = exact_nll(model, val)
        else:
            b = likelihood_bound(model, val, num_t=8, seed=0, batch_size=64)
        rec = {"run": name, "train_steps": args.steps, "held_out_bits": b.bits_per_token,
               "stderr": b.stderr_bits, "load_start": load0, "load": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
