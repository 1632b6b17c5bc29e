"""Fixed-seed training outputs, recorded once and checked after a refactor of the training code.

Trains a few steps of the demo's model on Hamlet with each objective (DWDSE, the masked NELBO with
uniform, stratified and masks times, the autoregressive baseline, block diffusion with both block losses,
and the uniform graph with gradient accumulation and dropout), then hashes the final weights, the EMA and
the optimizer state tensor by tensor, and keeps the loss and held-out log lines (without the timings). A
refactor that changes nothing gives the same JSON.

Usage: `python benches/golden_train.py [--write] [--out benches/results/golden_train.json]`: without
`--write` it compares with the stored file and exits 1 on a difference. Runs in a temporary directory,
float32 on the CPU (no bf16 autocast, so the figures do not depend on the CPU's instruction set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from ddm.demo import DEMO_CONFIG
from ddm.training import TrainConfig, train
from safetensors.torch import load_file

BASE = dict(
    DEMO_CONFIG,
    steps=6,
    batch_size=16,
    seq_len=64,
    cpu_bf16=False,
    device="cpu",
    eval_every=3,
    log_every=2,
    save_every=3,
    progress=False,
    plot=False,
)
RUNS = {
    "diffusion": dict(objective="diffusion", t_sampling="uniform", time_conditioning=True),
    "masked_masks": dict(),  # the demo's recipe
    "masked_stratified": dict(t_sampling="stratified"),
    "autoregressive": dict(objective="autoregressive", t_sampling="uniform"),
    "block_masked": dict(objective="block", block_size=16, t_sampling="uniform"),
    "block_diffusion": dict(objective="block", block_size=16, block_loss="diffusion", t_sampling="uniform"),
    "uniform_accum": dict(
        objective="diffusion",
        graph="uniform",
        schedule="geometric",
        t_sampling="uniform",
        time_conditioning=True,
        grad_accum=2,
        dropout=0.1,
    ),
}
TIMINGS = ("tokens_per_s", "elapsed_s")


def _tensor_hash(path: Path) -> str:
    h = hashlib.sha256()
    tensors = load_file(str(path))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_one(root: Path, name: str, overrides: dict) -> dict:
    """Trains run `name` under `root` and returns its hashes and log lines."""
    cfg = TrainConfig.from_dict({**BASE, **overrides, "run_dir": str(root / name)})
    path = train(cfg)
    log = []
    for line in (root / name / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        log.append({k: v for k, v in rec.items() if k not in TIMINGS})
    return {
        "checkpoint": path.name,
        **{kind: _tensor_hash(path / f"{kind}.safetensors") for kind in ("model", "ema", "optimizer")},
        "log": log,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="record the figures instead of checking them")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "golden_train.json"))
    ap.add_argument("--only", nargs="*", help="run only these runs")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the summation order of a matmul can depend on the thread count
    names = args.only or list(RUNS)
    with tempfile.TemporaryDirectory() as tmp:
        got = {name: run_one(Path(tmp), name, RUNS[name]) for name in names}
    out = Path(args.out)
    if args.write:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(got, indent=1) + "\n")
        print(f"wrote {out}")
        return 0
    want = json.loads(out.read_text())
    bad = [name for name in names if got[name] != want.get(name)]
    for name in names:
        print(f"{name}: {'differs' if name in bad else 'identical'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
