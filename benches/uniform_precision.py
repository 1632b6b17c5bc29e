"""Accuracy and cost of the uniform Tweedie (analytic) step at large noise steps, side by side in one run.

Issue 12, defect 1: at a large noise step `d` every score is near 1 and the clipped weights
`max(0, s_y - T)` are of order `e^-d`, below the resolution of a float32 cache of `exp(l - m)`. The Rust
step now takes an exact float64 path there and keeps the one-pass float32 path where the cancellation
cannot occur. This script prints, for the installed core and optionally an older build of it
(`--baseline PATH/TO/_core*.so`, loaded under another name in the same process):

1. accuracy: the total-variation distance between the empirical law of one Rust step and the exact
   posterior, `Uniform(5)`, `p0 = [.5, .2, .15, .1, .05]`, exact scores at `sigma_bar = 20`, `x = 0`, for
   several `d`, with the float64 torch step (`ddm.sampling.torch_steps`) beside it;
2. the whole sampler: `Uniform(4)`, L = 2, Geometric(1e-4, 20), exact scores, 1 / 2 / 4 steps, 40k
   draws: TV of the empirical law of `ddm.sample` to the exact law of the discretised sampler
   (`tests/exact_scores.py`), for each core and the torch backend;
3. cost: one uniform analytic step on `[4, 256, 50258]` float32 log-scores (one thread) at a small `d`
   (the fast path) and at a large `d` with scores near 1 (the exact path), with a read pass over the
   array (the floor) and the float64 torch step.

Usage:
    python benches/uniform_precision.py [--baseline OLD_CORE.so] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import time
from typing import Any

os.environ.setdefault("DDM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ddm import _core  # noqa: E402
from ddm.graphs import Uniform  # noqa: E402
from ddm.sampling import torch_steps  # noqa: E402


def load_core(path: str) -> Any:
    """An extension module built from another commit, imported as `baseline._core` beside `ddm._core`."""
    loader = importlib.machinery.ExtensionFileLoader("baseline._core", path)
    spec = importlib.util.spec_from_file_location("baseline._core", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def analytic(core: Any, x: np.ndarray, ls: np.ndarray, d: np.ndarray, n: int, seed: int) -> np.ndarray:
    if hasattr(core, "reverse_step"):
        return core.reverse_step("analytic", x, ls, d, False, n, seed, 0)
    return core.analytic_step(x, ls, d, False, n, seed, 0)


def exact_posterior(p0: torch.Tensor, sigma_t: float, sigma_s: float, x_t: int) -> torch.Tensor:
    g = Uniform(len(p0))
    marg_s = p0 @ g.transition(torch.arange(len(p0)), torch.tensor(sigma_s, dtype=torch.float64))
    kern = g.transition(torch.arange(len(p0)), torch.tensor(sigma_t - sigma_s, dtype=torch.float64))
    joint = marg_s * kern[:, x_t]
    return joint / joint.sum()


def exact_log_score(p0: torch.Tensor, sigma: float, x: int) -> torch.Tensor:
    g = Uniform(len(p0))
    p_t = p0 @ g.transition(torch.arange(len(p0)), torch.tensor(sigma, dtype=torch.float64))
    return torch.log(p_t / p_t[x])


def accuracy(cores: dict[str, Any], n_draws: int) -> None:
    p0 = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    sigma_t = 20.0
    l = exact_log_score(p0, sigma_t, 0).to(torch.float32)  # (5,)
    print(f"accuracy: one step from sigma_bar = {sigma_t}, x = 0, {n_draws} draws (noise TV ~ 0.002)")
    print(f"{'d':>10} " + " ".join(f"{name:>12}" for name in [*cores, "torch f64"]))
    for d in (20 - 1e-4, 19.0, 15.0, 10.0, 5.0, 1.0):
        truth = exact_posterior(p0, sigma_t, sigma_t - d, 0)
        x = np.zeros((n_draws, 1), dtype=np.int64)
        ls = np.ascontiguousarray(np.broadcast_to(l.numpy(), (n_draws, 1, 5)))
        lev = np.full(n_draws, d)
        row = []
        for core in cores.values():
            out = analytic(core, x, ls, lev, 5, 7)
            emp = np.bincount(out.reshape(-1), minlength=5) / n_draws
            row.append(0.5 * float(np.abs(emp - truth.numpy()).sum()))
        probs = torch_steps.analytic_step_probs(
            Uniform(5), torch.zeros(1, 1, dtype=torch.int64), l[None, None], d
        )
        row.append(0.5 * float((probs[0, 0] - truth).abs().sum()))
        print(f"{d:>10.4f} " + " ".join(f"{v:>12.4f}" for v in row))


def sampler_tv(cores: dict[str, Any], n: int) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ddm.sampling import Sampler, _native, sample
    from ddm.schedules import Geometric
    from exact_scores import ExactScore, correlated_law, empirical, sampler_law, tv

    n_tok, length = 4, 2
    graph, schedule = Uniform(n_tok), Geometric(1e-4, 20.0)
    model = ExactScore(graph, correlated_law(n_tok, length))
    torch.set_num_threads(1)
    print(f"\nsampler: Uniform(4), L = 2, Geometric(1e-4, 20), exact scores, {n} draws: TV to the exact law")
    print(f"{'steps':>6} " + " ".join(f"{'rust ' + name:>14}" for name in cores) + f" {'torch':>8}")
    for steps in (1, 2, 4):
        s = Sampler(graph, schedule, predictor="analytic")
        s.set_timesteps(steps)
        law = sampler_law(model, s)
        kw = dict(graph=graph, schedule=schedule, batch_size=n, seq_len=length, seed=99)
        row = []
        own = _native._core
        try:
            for core in cores.values():
                _native._core = core
                row.append(tv(empirical(sample(model, steps, backend="rust", **kw), n_tok), law))
        finally:
            _native._core = own
        row.append(tv(empirical(sample(model, steps, backend="torch", **kw), n_tok), law))
        print(f"{steps:>6} " + " ".join(f"{v:>14.3f}" for v in row[:-1]) + f" {row[-1]:>8.3f}")


def median(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cost(cores: dict[str, Any], shape: tuple[int, int, int], repeats: int) -> None:
    b, length, dim = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, dim, (b, length), generator=g).numpy()
    cases = {
        "small d = 0.05, scores ~ N(0, 1)": (torch.randn(shape, generator=g), 0.05),
        "large d = 5, scores ~ N(0, 1e-3)": (1e-3 * torch.randn(shape, generator=g), 5.0),
    }
    torch.set_num_threads(1)
    print(f"\ncost: one uniform analytic step on {list(shape)} float32, 1 thread (median of {repeats})")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, (ls_t, d) in cases.items():
        ls = ls_t.numpy()
        lev = np.full(b, d)
        floor = median(lambda ls=ls: ls.sum(), repeats)
        times = {
            k: median(lambda c=c, ls=ls, lev=lev: analytic(c, x, ls, lev, dim, 3), repeats)
            for k, c in cores.items()
        }
        xt = torch.from_numpy(x)
        tt = median(
            lambda ls_t=ls_t, d=d, xt=xt: torch_steps.analytic_step(Uniform(dim), xt, ls_t, d),
            max(1, repeats // 4),
        )
        cells = [f"{k} {v * 1e3:.1f} ms ({v / floor:.2f}x floor)" for k, v in times.items()]
        print(f"  {name}: floor {floor * 1e3:.1f} ms; " + "; ".join(cells) + f"; torch f64 {tt * 1e3:.0f} ms")
        if "baseline" in times:
            print(f"    current / baseline: {times['current'] / times['baseline']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="path to an older build of ddm/_core*.so to compare against")
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = ap.parse_args()
    cores = {"current": _core}
    if args.baseline:
        cores["baseline"] = load_core(args.baseline)
    accuracy(cores, 20_000 if args.quick else 200_000)
    sampler_tv(cores, 10_000 if args.quick else 40_000)
    cost(cores, (1, 16, 50258) if args.quick else (4, 256, 50258), 3 if args.quick else 7)


if __name__ == "__main__":
    main()
