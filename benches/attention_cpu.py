"""The CPU attention path of `ddm.model.transformer.attention`, side by side with SDPA's fused kernel.

Part 1 times forward + backward of one attention call on bf16 inputs at several `[B, H, L, hd]`, the fused
kernel (`F.scaled_dot_product_attention`) against the explicit float32 form that `attention` uses up to
`CPU_EXPLICIT_ATTENTION_MAX`, alternating the two in rounds, and prints each form's largest relative
error against a float32 reference. Part 2 times full bf16 training steps of the demo model (keyed masked
loss, backward, clipping, AdamW) with the explicit path on and off (the threshold set to 0), alternating.
Prints medians, ratios and the load average.

Usage: `python benches/attention_cpu.py [--threads 2] [--rounds 5]`
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ddm.model.transformer as transformer
import torch
import torch.nn.functional as F
from ddm.demo import DEMO_CONFIG
from ddm.model import ScoreModel
from ddm.model.transformer import cpu_has_native_bf16
from ddm.training import TrainConfig
from ddm.training import distributed as ddist
from ddm.training.config import make_graph, make_schedule

SHAPES = [(32, 4, 64, 48), (32, 4, 128, 48), (32, 4, 128, 64), (32, 4, 256, 64)]


def _median_ms(fns: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _one_shape(shape: tuple[int, int, int, int], rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())

    def fused() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    def explicit() -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            s = (q.float() * shape[-1] ** -0.5) @ k.float().transpose(-1, -2)
            return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)

    forms = {"fused": fused, "explicit": explicit}
    err = {n: float((f().detach().float() - ref).abs().max() / ref.abs().max()) for n, f in forms.items()}
    ms = _median_ms({n: (lambda f=f: f().float().sum().backward()) for n, f in forms.items()}, rounds)
    used = "explicit" if shape[2] ** 2 <= transformer.CPU_EXPLICIT_ATTENTION_MAX else "fused"
    print(
        f"  {shape}: fused {ms['fused']:.1f}, explicit {ms['explicit']:.1f} "
        f"(fused / explicit {ms['fused'] / ms['explicit']:.2f}x); max rel. error fused {err['fused']:.1e}, "
        f"explicit {err['explicit']:.1e}; attention() uses {used}"
    )


def attention_calls(rounds: int) -> None:
    print("one attention call, forward + backward, bf16 inputs (ms):")
    for shape in SHAPES:
        _one_shape(shape, rounds)


def training_steps(rounds: int) -> None:
    cfg = TrainConfig.from_dict({**DEMO_CONFIG, "run_dir": "unused"})
    graph, schedule = make_graph(cfg, 66), make_schedule(cfg)
    torch.manual_seed(0)
    model = ScoreModel(cfg.model_config(), graph, schedule)
    model.cpu_bf16 = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 65, (cfg.batch_size, cfg.seq_len), generator=g)
    rows = torch.arange(cfg.batch_size)
    limit = transformer.CPU_EXPLICIT_ATTENTION_MAX

    def step(threshold: int) -> None:
        transformer.CPU_EXPLICIT_ATTENTION_MAX = threshold
        opt.zero_grad(set_to_none=True)
        loss = ddist.keyed_loss(
            lambda x, s: model(x, s, log_probs=True), graph, schedule, x0, seed=0, step=0, rows=rows,
            eps_t=cfg.eps_t, objective="masked", batch_size=cfg.batch_size,
        )  # fmt: skip
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    ms = _median_ms({"explicit": lambda: step(limit), "fused": lambda: step(0)}, rounds)
    transformer.CPU_EXPLICIT_ATTENTION_MAX = limit
    print(
        f"demo training step, bf16 (ms): fused {ms['fused']:.0f}, explicit {ms['explicit']:.0f} "
        f"(fused / explicit {ms['fused'] / ms['explicit']:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"native bf16: {cpu_has_native_bf16()}; threads {args.threads}; load {os.getloadavg()[0]:.2f}")
    attention_calls(args.rounds)
    training_steps(args.rounds)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
