"""tokens/s of ddm sampling a sedd-small-shaped model (random weights) loaded through load_sedd, on CPU.

Usage: python benches/sedd_small.py [STEPS]   (the network dominates; longer runs are extrapolated)
"""

import sys
import tempfile
import time
from pathlib import Path

import torch
from ddm.graphs import Absorbing
from ddm.io.sedd import export_sedd, load_sedd
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling import sample
from ddm.schedules import LogLinear

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
torch.manual_seed(0)
m = ScoreModel(ModelConfig.from_size("small", seq_len=1024), Absorbing(50257), LogLinear())
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.02)
d = Path(tempfile.mkdtemp()) / "sedd-small-random"
export_sedd(m, d)
del m
model = load_sedd(d)
print("params", sum(p.numel() for p in model.parameters()), "threads", torch.get_num_threads())
x = torch.full((1, 1024), 50257)
with torch.inference_mode():
    model(x, torch.tensor([1.0]))  # warm-up
    t0 = time.perf_counter()
    model(x, torch.tensor([1.0]))
    fwd = time.perf_counter() - t0
print(f"one network call (B=1, L=1024): {fwd:.2f} s")
t0 = time.perf_counter()
out, stats = sample(model, steps=steps, batch_size=1, seed=0, return_stats=True)
dt = time.perf_counter() - t0
calls = steps + 1
print(stats)
print(f"{steps} steps + denoise: {dt:.1f} s, {1024 / dt:.1f} tokens/s ({dt / calls:.2f} s per network call)")
for s in (128, 1024):
    total = (s + 1) * dt / calls
    print(f"extrapolated {s} steps: {total:.0f} s -> {1024 / total:.2f} tokens/s")
