"""Where a user waits, side by side in one run: the network call, `ddm.sample` on the demo model, and the
sampling loop at a small vocabulary (issue 17, parts 2 and 3).

Every variant runs this tree, so the script works from a fresh clone with the checkpoint `make demo`
writes (an old commit could not load today's checkpoints, and a clone need not hold it). Each measurement
runs in a fresh subprocess (`--worker`), the variants in turn, `--rounds` times, and the fastest round of
each is reported with the load average:

- `OMP active`: `OMP_WAIT_POLICY=ACTIVE`, libgomp's workers spinning between ops: what torch did before
  `import ddm` chose the passive policy (the "before" of that change);
- `default`: as a user gets it (`import ddm` sets `OMP_WAIT_POLICY=PASSIVE` unless set);
- `cpu_bf16`: and the demo model with `ScoreModel.cpu_bf16 = True` (the opt-in bf16 autocast on a CPU
  with native bf16; not the same law: log-scores move by ~1e-2).

The code changes of issue 17 themselves (fewer passes in the forward, the loop's buffers) have no switch:
their before/after, measured against the commit before them, is in BENCHMARKS.md.

Figures: one forward of the model on `[8, seq_len]` (ms), `ddm.sample` of the model (8 sequences, Rust
steps, tokens/s), and the dim-28 loop of `benches/compare.py` (`[4, 256]`, 32 steps; `--quick`:
`[4, 32]`, 4 steps): with a model that costs nothing (the loop and the steps alone) and with its tiny
network, Rust against torch steps.

Usage: `python benches/user_wait.py [--checkpoint PATH] [--steps 16] [--rounds 2] [--threads 2] [--quick]`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "runs" / "demo")  # `make demo` writes it; any checkpoint ddm.load reads


def worker(args: argparse.Namespace) -> dict:
    import ddm  # first: it sets the OpenMP wait policy before torch loads
    import torch
    from ddm.graphs import Absorbing
    from ddm.model import ScoreModel
    from ddm.schedules import LogLinear

    torch.set_num_threads(args.threads)
    res: dict = {"ddm": ddm.__file__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}

    def best(fn, n: int, warm: bool = True) -> float:
        if warm:
            fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    model = ddm.load(args.checkpoint)
    if args.bf16:
        model.cpu_bf16 = True  # the opt-in bf16 autocast (no effect without native bf16)
    x = torch.randint(0, model.dim - 1, (8, model.seq_len), generator=torch.Generator().manual_seed(0))
    x[:, ::2] = model.dim - 1  # half MASK
    sigma = torch.full((8,), 0.7)
    with torch.no_grad():
        res["forward_ms"] = 1000 * best(lambda: model(x, sigma), 4)
    n = 8 * model.seq_len
    res["demo_sample_tokens_per_s"] = n / best(
        lambda: ddm.sample(model, args.steps, batch_size=8, seed=1, backend="rust"), 1, warm=False
    )
    if args.bf16:
        return res

    g = Absorbing(27)
    length, steps = (32, 4) if args.quick else (256, 32)
    ls = torch.randn(4, length, 28, generator=torch.Generator().manual_seed(0)) - 2

    class Free:  # a model that costs nothing: the loop and the steps alone
        graph, schedule, seq_len = g, LogLinear(), length

        def __call__(self, x, sigma):
            return ls

    torch.manual_seed(0)
    config = {"hidden": 64, "heads": 2, "blocks": 2, "cond_dim": 32, "seq_len": length, "dropout": 0.0}
    tiny = ScoreModel(config, g, LogLinear()).eval()
    for name, m, reps in (("loop", Free(), 2 if args.quick else 30), ("tiny", tiny, 1 if args.quick else 2)):
        for backend in ("rust", "torch"):
            s = best(lambda m=m, b=backend: ddm.sample(m, steps, batch_size=4, seed=3, backend=b), reps)
            res[f"{name}28_{backend}_tokens_per_s"] = 4 * length / s
    return res


def run_variant(omp: str | None, bf16: bool, args: argparse.Namespace) -> dict:
    """One measurement of this tree in a fresh process, with `OMP_WAIT_POLICY=omp` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "PYTHONPATH")}
    env["PYTHONPATH"] = str(ROOT / "python")
    if omp is not None:
        env["OMP_WAIT_POLICY"] = omp
    cmd = [sys.executable, __file__, "--worker", "--checkpoint", args.checkpoint, "--steps", str(args.steps)]
    cmd += (
        ["--threads", str(args.threads)] + (["--bf16"] if bf16 else []) + (["--quick"] if args.quick else [])
    )
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"the worker ({omp=}, {bf16=}) exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


VARIANTS = {"OMP active": ("ACTIVE", False), "default": (None, False), "cpu_bf16": (None, True)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=DEMO)
    ap.add_argument("--steps", type=int, default=16, help="steps of the demo model's ddm.sample")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="a short dim-28 loop (a smoke test)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    if not Path(args.checkpoint).exists():
        ap.error(f"no checkpoint at {args.checkpoint}: run `make demo` first, or pass --checkpoint")
    args.checkpoint = str(Path(args.checkpoint).resolve())  # the workers run in another directory
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for name, (omp, bf16) in VARIANTS.items():
            results[name].append(run_variant(omp, bf16, args))
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    keys = [k for k in results["default"][0] if k.endswith(("_ms", "_per_s"))]
    best = {  # the fastest round; cpu_bf16 measures the demo model only
        name: {k: (min if k.endswith("_ms") else max)(r[k] for r in rs) for k in keys if k in rs[0]}
        for name, rs in results.items()
    }
    loads = f"{' '.join(load0)} -> {' '.join(load1)}"
    print(f"load average (1, 5, 15 min) {loads}; torch threads {args.threads}; best of {args.rounds} rounds")
    print("| figure | " + " | ".join(VARIANTS) + " | default / OMP active |")
    print("|---|" + "--:|" * (len(VARIANTS) + 1))
    for k in keys:
        b, a = best["OMP active"][k], best["default"][k]
        ratio = b / a if k.endswith("_ms") else a / b
        cells = [f"{best[n][k]:.1f}" if k in best[n] else "-" for n in VARIANTS]
        print(f"| {k} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    for name in [n for n in VARIANTS if not VARIANTS[n][1]]:
        r, t = best[name]["loop28_rust_tokens_per_s"], best[name]["loop28_torch_tokens_per_s"]
        r2, t2 = best[name]["tiny28_rust_tokens_per_s"], best[name]["tiny28_torch_tokens_per_s"]
        print(f"{name}: dim 28 Rust / torch: loop {r / t:.2f}x, with the tiny network {r2 / t2:.2f}x")
    report = {"load": [load0, load1], "args": vars(args), "results": results, "best": best}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
