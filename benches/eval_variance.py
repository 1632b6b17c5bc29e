"""The Monte-Carlo error of `likelihood_bound` by design and rows per block, side by side (issue 17, part 1).

On a trained checkpoint (default: the demo's) and a few held-out blocks, draws each block's bound `--reps`
times with independent seeds for every (design, rows per block) pair and prints the Monte-Carlo standard
deviation of one block's estimate (root mean over blocks of the variance over seeds), the network calls
per block, and the calls that would give the Monte-Carlo error of the baseline (128 uniform strata):
`calls x (sd / sd_baseline)^2`. The spread over blocks (what `Bound.stderr` adds to it) is printed apart.

The uniform-strata estimate is heavy-tailed (a rare position masked at a tiny t in the first stratum), so
its sample variance over a few seeds tends to be too small: the comparison favours the baseline.

Usage: `python benches/eval_variance.py [CHECKPOINT] [--blocks 4] [--reps 4] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ddm
import torch
from ddm.eval.bound import _bound_terms, heldout_blocks

DEMO = str(Path(__file__).resolve().parents[1] / "runs" / "demo")  # `make demo` writes it


def block_sd(model, x: torch.Tensor, design: str, num_t: int, reps: int, seed: int) -> dict:
    """Each block `reps` times (independent seeds): its Monte-Carlo sd in nats/token, and the calls."""
    M, L = x.shape
    t0 = time.perf_counter()
    with torch.no_grad():
        rows = x.repeat(reps, 1)  # (reps M, L): every copy of a block draws its own times and masks
        diffusion, _, _, _, calls = _bound_terms(
            model, model.graph, model.schedule, rows, None, num_t, 64, seed, design=design
        )
    est = diffusion.reshape(reps, M) / L  # (reps, M)
    return {
        "design": design,
        "num_t": num_t,
        "reps": reps,
        "mean": float(est.mean()),
        "mc_sd": float(est.var(dim=0).mean().sqrt()),
        "block_sd": float(est.mean(dim=0).std()),
        "calls_per_block": calls / (reps * M),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=DEMO)
    ap.add_argument("--blocks", type=int, default=4, help="held-out blocks, spread over the split")
    ap.add_argument("--reps", type=int, default=4, help="seeds per block for the baseline (x4 for K=32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ddm.load(args.checkpoint)
    x = heldout_blocks(model.checkpoint_path, model.seq_len)
    x = x[torch.linspace(0, len(x) - 1, args.blocks).round().long()]
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    cases = [("strata", 128, args.reps), ("strata", 32, 2 * args.reps), ("masks", 32, 4 * args.reps)]
    out = [block_sd(model, x, d, k, r, seed=1000 * i) for i, (d, k, r) in enumerate(cases)]
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    base = out[0]
    loads = f"{' '.join(load0)} -> {' '.join(load1)}"
    print(f"{args.blocks} held-out blocks of {model.seq_len}; load average {loads}")
    print(
        "| design | rows per block | seeds | bound nats/token | MC sd per block | network calls per block "
        "| calls for the baseline's MC sd | fewer calls |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in out:
        need = r["calls_per_block"] * (r["mc_sd"] / base["mc_sd"]) ** 2
        r["calls_for_baseline_sd"] = need
        print(
            f"| {r['design']} | {r['num_t']} | {r['reps']} | {r['mean']:.4f} | {r['mc_sd']:.4f} | "
            f"{r['calls_per_block']:.1f} | {need:.1f} | {base['calls_per_block'] / need:.2f}x |"
        )
    print(f"spread over blocks (baseline): {base['block_sd']:.4f} nats/token")
    if args.out:
        args.out.write_text(json.dumps({"load": [load0, load1], "cases": out}, indent=1))


if __name__ == "__main__":
    main()
