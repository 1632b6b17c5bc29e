"""Training tokens/s in float32 and under CPU bf16 autocast, side by side in one process (issue 18).

Times full optimizer steps (keyed loss, backward, clipping, AdamW) of a model on random tokens, alternating
float32 and `cpu_bf16` in rounds so that a change in load falls on both; prints the medians, their ratio,
whether this CPU has native bf16 (`cpu_has_native_bf16`; without it the two are the same computation), and
the load average.

Usage: `python benches/train_throughput.py [--size demo|issue] [--threads 2] [--rounds 4]`
- `demo`: the demo model (tiny: 192 wide, 3 blocks), 32 x 128;
- `issue`: issue 18's 3.6M model (256 wide, 4 heads, 4 blocks, cond 64), 32 x 256.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from ddm.model import ScoreModel
from ddm.model.transformer import cpu_has_native_bf16
from ddm.training import TrainConfig
from ddm.training import distributed as ddist
from ddm.training.config import make_graph, make_schedule

SIZES = {
    "demo": dict(model="tiny", seq_len=128, batch_size=32, dropout=0.0),
    "issue": dict(
        model="tiny", hidden=256, heads=4, blocks=4, cond_dim=64, seq_len=256, batch_size=32, dropout=0.0
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and variant")
    ap.add_argument("--objective", choices=["diffusion", "masked"], default="masked")
    ap.add_argument("--vocab", type=int, default=66, help="tokens (the demo's Hamlet has 65 + MASK)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    masked = args.objective == "masked"
    cfg = TrainConfig.from_dict(
        {**SIZES[args.size], "objective": args.objective, "time_conditioning": not masked}
    )
    graph, schedule = make_graph(cfg, args.vocab), make_schedule(cfg)
    model = ScoreModel(cfg.model_config(), graph, schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # as the training loop
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, args.vocab, (cfg.batch_size, cfg.seq_len), generator=g)
    rows = torch.arange(cfg.batch_size)

    def step(s: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = ddist.keyed_loss(
            lambda x, sb: model(x, sb, log_probs=masked), graph, schedule, x0, seed=0, step=s, rows=rows,
            eps_t=1e-3, objective=args.objective, batch_size=cfg.batch_size,
        )  # fmt: skip
        (loss.sum() / cfg.batch_size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    load0 = os.getloadavg()
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            model.cpu_bf16 = bf16
            step(0)  # warm-up of this variant's kernels
            t0 = time.perf_counter()
            for s in range(args.steps):
                step(s)
            times[bf16].append((time.perf_counter() - t0) / args.steps)
    f32, b16 = statistics.median(times[False]), statistics.median(times[True])
    tokens = cfg.batch_size * cfg.seq_len
    rec = dict(
        size=args.size, objective=args.objective, threads=args.threads, native_bf16=cpu_has_native_bf16(),
        fp32_s_per_step=round(f32, 4), bf16_s_per_step=round(b16, 4), fp32_tokens_per_s=round(tokens / f32),
        bf16_tokens_per_s=round(tokens / b16), bf16_speedup=round(f32 / b16, 3),
        load_start=[round(v, 2) for v in load0], load_end=[round(v, 2) for v in os.getloadavg()],
    )  # fmt: skip
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
