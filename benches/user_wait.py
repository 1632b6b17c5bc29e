"""Before and after, side by side in one run: the network call, `ddm.sample` on the demo model, and the
sampling loop at a small vocabulary (issue 17, parts 2 and 3).

The "before" is the package at `--baseline` (default: the commit before issue 17), exported with
`git archive` into a temporary directory with the current build of the Rust core copied in (its interface
is unchanged); the "after" is this tree. Each measurement runs in a fresh subprocess (`--worker`), the
variants in turn, `--rounds` times, and the fastest round of each is reported with the load average:

- `before`: the baseline, with the environment's OpenMP wait policy (unset: libgomp spins);
- `after, OMP active`: this tree with `OMP_WAIT_POLICY=ACTIVE` (the code changes alone);
- `after`: this tree as a user gets it (`import ddm` sets `OMP_WAIT_POLICY=PASSIVE` unless set);
- `after, cpu_bf16`: and the demo model with `ScoreModel.cpu_bf16 = True` (the opt-in bf16 autocast on a
  CPU with native bf16; not the same law: log-scores move by ~1e-2).

Figures: one forward of the demo model on `[8, 128]` (ms), `ddm.sample` of the demo model (8 x 128, Rust
steps, tokens/s), and the dim-28 loop of `benches/compare.py` (`[4, 256]`, 32 steps): with a model that
costs nothing (the loop and the steps alone) and with its tiny network, Rust against torch steps.

Usage: `python benches/user_wait.py [--checkpoint PATH] [--steps 16] [--rounds 2] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "6734ba4"  # main before issue 17
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
        model.cpu_bf16 = True  # issue 17's opt-in; a baseline without the attribute ignores it
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
    ls = torch.randn(4, 256, 28, generator=torch.Generator().manual_seed(0)) - 2

    class Free:  # a model that costs nothing: the loop and the steps alone
        graph, schedule, seq_len = g, LogLinear(), 256

        def __call__(self, x, sigma):
            return ls

    torch.manual_seed(0)
    config = {"hidden": 64, "heads": 2, "blocks": 2, "cond_dim": 32, "seq_len": 256, "dropout": 0.0}
    tiny = ScoreModel(config, g, LogLinear()).eval()
    for name, m, reps in (("loop", Free(), 30), ("tiny", tiny, 2)):
        for backend in ("rust", "torch"):
            s = best(lambda m=m, b=backend: ddm.sample(m, 32, batch_size=4, seed=3, backend=b), reps)
            res[f"{name}28_{backend}_tokens_per_s"] = 4 * 256 / s
    return res


def export_baseline(rev: str, dest: Path) -> Path:
    """`git archive rev python/ddm` into `dest`, with this build's `_core` extension copied in."""
    archive = subprocess.run(["git", "archive", rev, "python/ddm"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for so in (ROOT / "python" / "ddm").glob("_core*.so"):
        shutil.copy2(so, dest / "python" / "ddm" / so.name)
    return dest / "python"


def run_variant(path: Path, omp: str | None, bf16: bool, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "PYTHONPATH")}
    env["PYTHONPATH"] = str(path)
    if omp is not None:
        env["OMP_WAIT_POLICY"] = omp
    cmd = [sys.executable, __file__, "--worker", "--checkpoint", args.checkpoint, "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)] + (["--bf16"] if bf16 else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=DEMO)
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--steps", type=int, default=16, help="steps of the demo model's ddm.sample")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        base = export_baseline(args.baseline, Path(tmp))
        here = ROOT / "python"
        variants = {"before": (base, None, False), "after, OMP active": (here, "ACTIVE", False),
                    "after": (here, None, False), "after, cpu_bf16": (here, None, True)}  # fmt: skip
        results: dict[str, list[dict]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (path, omp, bf16) in variants.items():
                results[name].append(run_variant(path, omp, bf16, args))
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    keys = [k for k in results["after"][0] if k.endswith(("_ms", "_per_s"))]
    best = {
        name: {k: (min if k.endswith("_ms") else max)(r.get(k, float("nan")) for r in rs) for k in keys}
        for name, rs in results.items()
    }
    loads = f"{' '.join(load0)} -> {' '.join(load1)}"
    print(f"load average (1, 5, 15 min) {loads}; torch threads {args.threads}; baseline {args.baseline}; "
          f"best of {args.rounds} rounds")  # fmt: skip
    print("| figure | " + " | ".join(variants) + " | after / before |")
    print("|---|" + "--:|" * (len(variants) + 1))
    for k in keys:
        b, a = best["before"][k], best["after"][k]
        ratio = b / a if k.endswith("_ms") else a / b
        print(f"| {k} | " + " | ".join(f"{best[n][k]:.1f}" for n in variants) + f" | {ratio:.2f}x |")
    for name in [n for n in variants if not variants[n][2]]:
        r, t = best[name]["loop28_rust_tokens_per_s"], best[name]["loop28_torch_tokens_per_s"]
        r2, t2 = best[name]["tiny28_rust_tokens_per_s"], best[name]["tiny28_torch_tokens_per_s"]
        print(f"{name}: dim 28 Rust / torch: loop {r / t:.2f}x, with the tiny network {r2 / t2:.2f}x")
    if args.out:
        args.out.write_text(
            json.dumps(
                {"load": [load0, load1], "args": vars(args), "results": results}, indent=1, default=str
            )
        )


if __name__ == "__main__":
    main()
