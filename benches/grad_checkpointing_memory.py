"""Peak training memory and step time with and without gradient checkpointing (issue 31).

Each setting runs in a fresh process (so that the peak resident set size is its own): the model is
built, one forward without gradients warms the allocator, then `--steps` training steps of the masked
objective at `--seq-len` are timed: forward and backward, and with `--optimizer` AdamW's step too.
Reported: the peak RSS of the process, the RSS before the first step (the weights), their difference
(what the steps added), and the median step time. Without the optimizer the peak is the backward
pass's: weights, the activations kept for it, and gradients. With it, AdamW's state (twice the
weights) sets the peak at small batches and hides the activations.

    python benches/grad_checkpointing_memory.py --model small --seq-len 1024 --batch-size 1 \\
        --out docs/quality_results/finetune/grad_checkpointing.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(a: argparse.Namespace) -> None:
    # imported here: the parent process only starts the children and must not hold torch's memory
    import torch
    from ddm.graphs import Absorbing
    from ddm.model import ScoreModel
    from ddm.model.transformer import ModelConfig
    from ddm.schedules import LogLinear
    from ddm.training.objective import keyed_loss

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = ModelConfig.from_size(a.model, seq_len=a.seq_len, dropout=0.0, subs=True, time_conditioning=False)
    model = ScoreModel(cfg, Absorbing(a.vocab), LogLinear())
    model.grad_checkpointing = a.checkpointing == "on"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if a.optimizer else None
    x0 = torch.randint(0, a.vocab, (a.batch_size, a.seq_len))
    with torch.no_grad():
        model(x0, torch.ones(a.batch_size))
    before = _rss_mib()
    times = []
    for step in range(a.steps):
        t0 = time.perf_counter()
        loss = keyed_loss(
            lambda x, s: model(x, s, log_probs=True), model.graph, model.schedule, x0, seed=0, step=step,
            rows=torch.arange(a.batch_size), objective="masked",
        ).mean()  # fmt: skip
        loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"checkpointing": a.checkpointing, "peak_rss_mib": peak, "rss_before_mib": before}
    print(json.dumps({**row, "added_mib": peak - before, "step_s": statistics.median(times), "times": times}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--optimizer",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="include AdamW's step: its state (2x the weights) then sets the peak at small batches, and "
        "the peak no longer shows the activations (default: forward and backward only)",
    )
    p.add_argument("--checkpointing", choices=("on", "off"))
    p.add_argument("--out")
    a = p.parse_args()
    if a.checkpointing:
        child(a)
        return
    rows = []
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--checkpointing", setting]
        cmd = [c for c in cmd if c != "--out" and c != a.out] if a.out else cmd
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    off, on = rows
    result = {
        "rows": rows,
        "peak_ratio": off["peak_rss_mib"] / on["peak_rss_mib"],
        "added_ratio": off["added_mib"] / on["added_mib"],
        "time_ratio": on["step_s"] / off["step_s"],
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
