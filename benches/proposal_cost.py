"""Cost of the proposal transform (temperature, top-k, top-p) and of the confidence proposals at the GPT-2
vocabulary: Rust against the plain Rust denoising step and the torch twin (issue 14; BENCHMARKS.md).

Run: `.venv/bin/python benches/proposal_cost.py` (after `make build`). Random N(0, 4) log-scores, much
flatter than a trained model's, so the top-p nucleus is large: a worst case for the partial sort.
"""

from __future__ import annotations

import time

import torch
from ddm.graphs import Absorbing
from ddm.sampling import _native, torch_steps
from ddm.sampling.proposal import apply_to_step, make_proposal


def ms(f, reps: int = 3) -> float:
    f()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    torch.manual_seed(0)
    b, length, n = 2, 128, 50257
    g = Absorbing(n)
    x = torch.full((b, length), n, dtype=torch.int64)
    ls = (torch.randn(b, length, n + 1) * 2).float()
    lv = torch.full((b,), 1e-4, dtype=torch.float64)
    print(f"[{b}, {length}] positions, dim {n + 1}, ms per call, torch threads {torch.get_num_threads()}")
    t = ms(lambda: _native.reverse_step("denoise", g, x, ls, lv, 0, 0))
    print(f"rust denoise_step (plain)                    {t:8.1f}")
    for opts in (dict(temperature=0.8), dict(top_k=50), dict(top_p=0.9), dict(temperature=0.8, top_p=0.95)):
        p = make_proposal(**opts)
        t = ms(lambda p=p: _native.proposal_step("denoise", g, x, ls, lv, 0, 0, p))
        print(f"rust proposal_step {opts!s:<26} {t:8.1f}")
    p = make_proposal(temperature=0.8, top_p=0.95)
    print(
        f"rust propose (confidence), T 0.8, top_p 0.95 {ms(lambda: _native.propose(g, x, ls, 0, 0, p)):8.1f}"
    )
    t = ms(lambda: apply_to_step(torch_steps.denoise_step_probs(g, x, ls, lv), x, p), 1)
    print(f"torch probs + transform, T 0.8, top_p 0.95   {t:8.1f}")


if __name__ == "__main__":
    main()
