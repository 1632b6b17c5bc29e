"""Side-by-side timing of the Rust kernels, the same step in plain torch, and a read pass over the scores.

In one process and one run, on the same inputs, for each case this times:

1. `rust`: the Rust step through `ddm.sampling._native` (what `ddm.sample` runs on the CPU);
2. `torch`: the same step written in plain torch ops the way the SEDD reference code writes it:
   `exp` of the log-scores, clone, the staggered score `exp(-dQ) s`, the transition row `exp(dQ)(x, .)`
   (or the reverse-rate row for Euler) over the whole `[B, L, dim]` tensor, then a float32 Gumbel-max
   `argmax(log p - log(-log u))` (written here from docs/math.md section 5; it is not part of the package);
3. `floor`: one read pass over the same float32 log-score array at the machine's read bandwidth, with the
   threads the Rust step runs on (`rust_threads`): numpy sums of one contiguous chunk per thread, run in
   a thread pool (numpy releases the GIL while it sums), as the step splits its rows. No step that reads
   the scores can be faster. One-thread `np.sum` and `torch.sum` (torch's threads) are timed as well;
   the fastest of the three is the floor (`floor_method`, `floor_threads`).

and, where useful, `torch_ddm`: the package's own torch step (`ddm.sampling.torch_steps`, float64
inverse-CDF draws: the law the Rust kernel implements exactly). The forward corruption is compared with
`Graph.sample_transition` (no floor). `ddm.sample` runs end to end with both backends on tiny models, and
the peak memory of one step beyond its inputs and output is measured in a fresh subprocess from
`/proc/self/status` (VmHWM after resetting it through `/proc/self/clear_refs`).

Usage:
    python benches/compare.py --out benches/results/latest.json     # the full report (`make bench`)
    python benches/compare.py --quick --out /tmp/quick.json        # tiny sizes, a few seconds (CI)

Medians over repeats are printed with the ratios torch/rust and rust/floor, and written to `--out` as a
JSON list of records: `case`, `rust_s`, `torch_s`, `floor_s` (median seconds, null where none), and
more (shapes, repeats, tokens/s, memory, the machine).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import _native, torch_steps

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------
# The reference step in plain torch, written the way the SEDD reference sampler writes it
# (Lou, Meng, Ermon 2024; formulas of docs/math.md section 5). float32 throughout, like the reference.
# --------------------------------------------------------------------------------------------------------


def ref_gumbel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """float32 Gumbel-max over the last axis: `argmax(log p - log(-log u))`, `[B, L, dim]` -> `[B, L]`."""
    u = torch.rand_like(probs)  # (B, L, dim)
    return (probs.clamp_(min=0).log() - torch.log(-torch.log(u))).argmax(dim=-1)


def ref_score(x: torch.Tensor, log_score: torch.Tensor) -> torch.Tensor:
    """The ratios `s = exp(l)` with `s_x = 1` at the current token, `[B, L, dim]` (the model's output)."""
    score = log_score.exp()  # (B, L, dim)
    return score.scatter_(-1, x[..., None], 1.0)


def ref_staggered(absorbing: bool, score: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """`exp(-d Q) s` over the last axis; `d` is `[B, 1, 1]`.

    Absorbing: `e^d s_y` off MASK, and at MASK `e^d s_M + (1 - e^d) sum_y s_y`.
    Uniform: `e^d s_y + (1 - e^d) S / N`, `S = sum_j s_j`.
    """
    total = score.sum(dim=-1, keepdim=True)  # (B, L, 1)
    if absorbing:
        out = score.clone()
        out *= d.exp()
        out[..., -1:] += (1 - d.exp()) * total
        return out
    return d.exp() * score + (1 - d.exp()) * total / score.shape[-1]


def ref_transp_transition(absorbing: bool, x: torch.Tensor, d: torch.Tensor, dim: int) -> torch.Tensor:
    """The transition row `exp(d Q)(x, y)` as a dense `[B, L, dim]` tensor; `d` is `[B, 1, 1]`."""
    keep = (-d).exp()  # (B, 1, 1)
    onehot = torch.nn.functional.one_hot(x, num_classes=dim).to(torch.float32)  # (B, L, dim)
    if absorbing:
        # From MASK every state is reached with probability 1 - e^{-d} (to MASK itself: e^{-d} + that).
        return keep * onehot + torch.where(x == dim - 1, 1 - keep[..., 0], 0.0)[..., None]
    row = torch.ones(*x.shape, dim) * (1 - keep) / dim
    return row + keep * onehot


def ref_analytic_probs(
    absorbing: bool, x: torch.Tensor, log_score: torch.Tensor, dsigma: torch.Tensor
) -> torch.Tensor:
    """Analytic (Tweedie tau-leaping) weights `exp(-dQ) s * exp(dQ)(x, .)`, float32 `[B, L, dim]`."""
    d = dsigma.to(torch.float32)[:, None, None]  # (B, 1, 1)
    score = ref_score(x, log_score)
    return ref_staggered(absorbing, score, d) * ref_transp_transition(absorbing, x, d, score.shape[-1])


def ref_denoise_probs(
    absorbing: bool, x: torch.Tensor, log_score: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Denoise: the analytic weights with all remaining noise; absorbing drops the MASK column."""
    probs = ref_analytic_probs(absorbing, x, log_score, sigma)  # (B, L, dim)
    return probs[..., :-1] if absorbing else probs


def ref_euler_probs(
    absorbing: bool, x: torch.Tensor, log_score: torch.Tensor, rate_dt: torch.Tensor
) -> torch.Tensor:
    """Euler weights `onehot(x) + rate_dt * R`, `R_y = Q(x, y) s_y` off x and `-sum` at x, `[B, L, dim]`."""
    dim = log_score.shape[-1]
    score = ref_score(x, log_score)
    onehot = torch.nn.functional.one_hot(x, num_classes=dim).to(torch.float32)  # (B, L, dim)
    if absorbing:
        row = -onehot  # Q(x, .): -1 at a real token x ...
        row[x == dim - 1] += 1.0  # ... and from MASK: 1 to every real token, 0 to MASK
    else:
        row = torch.full_like(score, 1.0 / dim).scatter_(-1, x[..., None], -(dim - 1) / dim)
    rate = row * score
    rate.scatter_(-1, x[..., None], 0.0)
    rate.scatter_(-1, x[..., None], -rate.sum(dim=-1, keepdim=True))
    return onehot + rate_dt.to(torch.float32)[:, None, None] * rate


def ref_analytic(
    absorbing: bool, x: torch.Tensor, log_score: torch.Tensor, dsigma: torch.Tensor
) -> torch.Tensor:
    """The reference analytic step: new tokens `[B, L]`."""
    return ref_gumbel_argmax(ref_analytic_probs(absorbing, x, log_score, dsigma))


def ref_denoise(
    absorbing: bool, x: torch.Tensor, log_score: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The reference denoising step: new tokens `[B, L]` (absorbing: never MASK)."""
    return ref_gumbel_argmax(ref_denoise_probs(absorbing, x, log_score, sigma))


def ref_euler(
    absorbing: bool, x: torch.Tensor, log_score: torch.Tensor, rate_dt: torch.Tensor
) -> torch.Tensor:
    """The reference Euler step: new tokens `[B, L]`."""
    return ref_gumbel_argmax(ref_euler_probs(absorbing, x, log_score, rate_dt))


# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------


class Timing(float):
    """A median wall-clock time in seconds (a float) that also carries the median CPU time of the process
    (`.cpu`, all threads). With one thread and other processes on the machine, the CPU time is the time
    the work itself took, without the time slices the scheduler gave to others."""

    cpu: float

    def __new__(cls, wall: float, cpu: float) -> Timing:
        t = super().__new__(cls, wall)
        t.cpu = cpu
        return t


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Median wall-clock (and process CPU) seconds of `fn()` over `repeats` runs after `warmup` ones."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Timing(statistics.median(walls), statistics.median(cpus))


def chunk_sum(chunk: np.ndarray) -> float:
    """One thread's share of the read pass: the sum of a contiguous chunk (numpy releases the GIL)."""
    return float(np.sum(chunk))


class StreamingRead:
    """A read pass over an array by `threads` threads at once: `chunk_sum` of one contiguous chunk per
    thread, on a pool built once (so a timed pass pays no thread start).

    Args:
        threads: the number of threads (and chunks), >= 1; one thread sums in the caller's thread.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="floor") if threads > 1 else None

    def __call__(self, arr: np.ndarray) -> float:
        """The sum of `arr`, read once."""
        flat = arr.reshape(-1)
        if self.pool is None:
            return chunk_sum(flat)
        bounds = np.linspace(0, flat.size, self.threads + 1).astype(np.int64)
        return sum(
            self.pool.map(chunk_sum, [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def floor_time(log_score: torch.Tensor, repeats: int, threads: int) -> tuple[Timing, str]:
    """One read pass over the log-scores at full bandwidth: the fastest of a `threads`-thread
    `StreamingRead`, one-thread `np.sum` and `torch.sum` (torch's threads), with the method's name."""
    arr = log_score.numpy()
    reader = StreamingRead(threads)
    try:
        times = {f"np.sum x {threads} threads": median_time(lambda: reader(arr), repeats)}
    finally:
        reader.close()
    times["np.sum"] = median_time(lambda: np.sum(arr), repeats)
    times["torch.sum"] = median_time(lambda: torch.sum(log_score), repeats)
    method = min(times, key=times.__getitem__)
    return times[method], method


def rust_threads() -> int:
    """The thread count the Rust core uses in this process (see `ddm.sampling._native`)."""
    for var in ("DDM_NUM_THREADS", "RAYON_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "rust_threads": rust_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------------


def make_graph(absorbing: bool, dim: int) -> Absorbing | Uniform:
    return Absorbing(dim - 1) if absorbing else Uniform(dim)


def make_inputs(
    absorbing: bool, batch: int, length: int, dim: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (absorbing: half the positions MASK, alternating) and float32 log-scores in [-12, -4)."""
    g = torch.Generator().manual_seed(seed)
    n_real = dim - 1 if absorbing else dim
    x = torch.randint(0, n_real, (batch, length), generator=g)  # (B, L)
    if absorbing:
        x[:, ::2] = dim - 1
    log_score = torch.empty(batch, length, dim).uniform_(-12.0, -4.0, generator=g)  # (B, L, dim)
    return x, log_score


STEPS = {
    # kind: (reference, package torch step, noise level); Rust runs `_native.reverse_step(kind, ...)`
    "analytic": (ref_analytic, torch_steps.analytic_step, 1e-2),
    "euler": (ref_euler, torch_steps.euler_step, 1e-2),
    "denoise": (ref_denoise, torch_steps.denoise_step, 1e-3),
}


def load_baseline(path: str) -> Any:
    """An extension module built from another commit (its `lib_core.so` or `_core*.so`), imported as
    `baseline._core` beside `ddm._core`, to time the old kernels against the new in one process."""
    loader = importlib.machinery.ExtensionFileLoader("baseline._core", path)
    spec = importlib.util.spec_from_file_location("baseline._core", path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def interleaved_times(fns: list[Callable[[], Any]], repeats: int) -> list[Timing]:
    """Median times of each of `fns`, called in turn `repeats` times after one warm-up round: on a
    shared machine each sees the same load."""
    for fn in fns:
        fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, w, c in zip(fns, walls, cpus, strict=True):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            w.append(time.perf_counter() - t0)
            c.append(time.process_time() - c0)
    return [Timing(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus, strict=True)]


def bench_step(
    step: str,
    absorbing: bool,
    shape: tuple[int, int, int],
    repeats: int,
    torch_repeats: int,
    ddm_torch: bool,
    baseline: Any = None,
) -> dict[str, Any]:
    """Times one reverse step three (or four) ways on the same inputs, and the `baseline` core's step
    (interleaved with the current one) when given."""
    batch, length, dim = shape
    ref_fn, pkg_fn, level = STEPS[step]
    graph = make_graph(absorbing, dim)
    x, log_score = make_inputs(absorbing, batch, length, dim)
    lv = torch.full((batch,), level, dtype=torch.float64)
    counter = iter(range(1 << 62))

    def rust_fn(k: int | None = None) -> torch.Tensor:
        return _native.reverse_step(
            step, graph, x, log_score, lv, seed=1, step=next(counter) if k is None else k
        )

    baseline_s = None
    same_tokens = None
    if baseline is None:
        rust_s = median_time(rust_fn, repeats)
    else:
        xv, lsv, lvv = x.numpy(), log_score.numpy(), lv.numpy()
        base_counter = iter(range(1 << 62))

        # the graph as a kind name (today's core) or as the `absorbing` flag (a core built before the kind)
        kinds = ["absorbing" if absorbing else "uniform", absorbing]

        def base_fn(k: int | None = None) -> np.ndarray:
            k = next(base_counter) if k is None else k
            while True:
                try:
                    return baseline.reverse_step(
                        step, xv, lsv, lvv, kinds[0], graph.vocab_size, 1, k, 0, None
                    )
                except TypeError:
                    if len(kinds) == 1:
                        raise
                    kinds.pop(0)  # an older core: pass the flag from now on

        rust_s, baseline_s = interleaved_times([rust_fn, base_fn], repeats)
        same_tokens = bool((rust_fn(7).numpy() == base_fn(7)).all())
    torch_s = median_time(lambda: ref_fn(absorbing, x, log_score, lv), torch_repeats)
    floor_s, floor_method = floor_time(log_score, repeats, rust_threads())
    rec: dict[str, Any] = {
        "case": f"{step}/{'absorb' if absorbing else 'uniform'}/{dim}",
        "kind": "step",
        "shape": [batch, length, dim],
        "masked_fraction": 0.5 if absorbing else None,
        "level": level,
        "rust_s": rust_s,
        "torch_s": torch_s,
        "floor_s": floor_s,
        "floor_method": floor_method,
        "floor_threads": rust_threads(),
        "torch_ddm_s": None,
        "rust_baseline_s": baseline_s,
        "same_tokens_as_baseline": same_tokens,
        "repeats": {"rust": repeats, "torch": torch_repeats, "floor": repeats},
        "log_score_bytes": log_score.numel() * log_score.element_size(),
    }
    if ddm_torch:
        rec["torch_ddm_s"] = median_time(lambda: pkg_fn(graph, x, log_score, lv), torch_repeats)
    # Sanity: the outputs are states of the graph (a benchmark of a broken kernel is worthless).
    out = _native.reverse_step(step, graph, x, log_score, lv, seed=1, step=0)
    assert out.shape == x.shape and int(out.min()) >= 0 and int(out.max()) < dim
    if absorbing and step == "denoise":
        assert bool((out != dim - 1).all()), "denoise returned MASK"
    return rec


CORRUPT_STREAM = 0x5EED0003  # any 32-bit tag: the cost does not depend on it


def bench_corrupt(absorbing: bool, shape: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    """Forward corruption: Rust against `Graph.sample_transition` (torch); no floor."""
    batch, length, dim = shape
    graph = make_graph(absorbing, dim)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, graph.vocab_size, (batch, length), generator=g)  # (B, L)
    sigma = torch.linspace(0.1, 4.0, batch, dtype=torch.float64)  # (B,)
    counter = iter(range(1 << 62))
    rust_s = median_time(
        lambda: _native.corrupt(graph, x, sigma, seed=1, step=next(counter), stream=CORRUPT_STREAM), repeats
    )
    torch_s = median_time(lambda: graph.sample_transition(x, sigma[:, None]), repeats)
    return {
        "case": f"corrupt/{'absorb' if absorbing else 'uniform'}/{dim}",
        "kind": "corrupt",
        "shape": [batch, length],
        "rust_s": rust_s,
        "torch_s": torch_s,
        "floor_s": None,
        "floor_method": None,
        "torch_ddm_s": None,
        "repeats": {"rust": repeats, "torch": repeats},
    }


# --------------------------------------------------------------------------------------------------------
# Peak memory of one step (fresh subprocess)
# --------------------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
from compare import STEPS, make_graph, make_inputs
from ddm.sampling import _native

step, absorbing, impl = sys.argv[2], sys.argv[3] == "1", sys.argv[4]
batch, length, dim = (int(v) for v in sys.argv[5:8])
torch.set_num_threads(int(sys.argv[8]))
ref_fn, _, level = STEPS[step]
graph = make_graph(absorbing, dim)

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    return out

# Warm up on a tiny input of the same dim: builds the thread pool and any lazy state.
xs, ls_small = make_inputs(absorbing, 1, 2, dim, seed=1)
lv1 = torch.full((1,), level, dtype=torch.float64)
if impl == "rust":
    _native.reverse_step(step, graph, xs, ls_small, lv1, seed=1, step=0)
else:
    ref_fn(absorbing, xs, ls_small, lv1)
# The inputs and the output, every page touched (make_inputs fills the scores in place).
x, log_score = make_inputs(absorbing, batch, length, dim)
lv = torch.full((batch,), level, dtype=torch.float64)
out = torch.zeros_like(x)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    reset = True
except OSError:
    reset = False
before = status()
if impl == "rust":
    _native.reverse_step(step, graph, x, log_score, lv, seed=1, step=1, out=out)
else:
    out = ref_fn(absorbing, x, log_score, lv)
after = status()
print(json.dumps({"reset": reset, "rss_before": before["VmRSS"], "hwm_before": before["VmHWM"],
                  "hwm_after": after["VmHWM"], "rss_after": after["VmRSS"]}))
"""


def peak_extra_memory(step: str, absorbing: bool, shape: tuple[int, int, int], impl: str) -> dict[str, Any]:
    """Peak resident memory of one step beyond its inputs and output, measured in a fresh process."""
    batch, length, dim = shape
    args = [str(ROOT / "benches"), step, "1" if absorbing else "0", impl, str(batch), str(length), str(dim)]
    args.append(str(torch.get_num_threads()))
    # A fixed mmap threshold: glibc otherwise raises it after the first large free, and a later scratch
    # buffer could reuse heap pages that are already resident (and would not show in VmHWM). And all the
    # machine's threads: the most scratch a step allocates (one row cache per thread).
    threads = os.cpu_count() or 1
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "DDM_NUM_THREADS": str(threads)}
    r = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
    )
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    m = json.loads(r.stdout.strip().splitlines()[-1])
    if not m["reset"]:
        return {"error": "could not reset VmHWM (/proc/self/clear_refs not writable)"}
    return {"peak_extra_bytes": max(0, m["hwm_after"] - m["rss_before"]), "threads": threads}


# --------------------------------------------------------------------------------------------------------
# ddm.sample end to end
# --------------------------------------------------------------------------------------------------------


def bench_sample(dim: int, batch: int, length: int, steps: int, repeats: int) -> dict[str, Any] | None:
    """`ddm.sample` on CPU with a tiny absorbing `ScoreModel` (random weights), Rust against torch steps."""
    try:
        from ddm.sampling import sample
    except ImportError as e:  # the sampling loop is not there yet
        print(f"skipping ddm.sample end to end: {e}")
        return None
    from ddm.model import ScoreModel
    from ddm.schedules import LogLinear

    torch.manual_seed(0)
    config = {"hidden": 64, "heads": 2, "blocks": 2, "cond_dim": 32, "seq_len": length, "dropout": 0.0}
    model = ScoreModel(config, Absorbing(dim - 1), LogLinear()).eval()
    result: dict[str, Any] = {
        "case": f"sample/absorb/{dim}",
        "kind": "sample",
        "shape": [batch, length, dim],
        "steps": steps,
        "model": config,
        "floor_s": None,
        "floor_method": None,
        "torch_ddm_s": None,
        "repeats": {"rust": repeats, "torch": repeats},
    }
    for backend in ("rust", "torch"):
        stats = []

        def run(backend: str = backend, stats: list = stats) -> None:
            _, st = sample(model, steps, batch_size=batch, seed=3, backend=backend, return_stats=True)
            stats.append(st)

        result[f"{backend}_s"] = median_time(run, repeats)
        result[f"{backend}_network_calls"] = stats[-1].network_calls
        result[f"{backend}_tokens_per_s"] = batch * length / result[f"{backend}_s"]
    # The network alone, once per step, for context: how much of a sample is the model.
    x = torch.full((batch, length), dim - 1)
    sigma = torch.ones(batch)
    with torch.no_grad():
        result["model_call_s"] = float(median_time(lambda: model(x, sigma), repeats))
    return result


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.3f} s"
    return f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def print_table(records: list[dict[str, Any]]) -> None:
    head = (
        f"{'case':<24}{'rust':>11}{'torch':>11}{'floor':>11}{'torch/rust':>12}{'rust/floor':>12}"
        f"{'(cpu) t/r':>11}{'(cpu) r/f':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in records:
        print(
            f"{r['case']:<24}{_fmt(r['rust_s'], 's'):>11}{_fmt(r['torch_s'], 's'):>11}"
            f"{_fmt(r['floor_s'], 's'):>11}{_fmt(r.get('torch_over_rust')):>12}"
            f"{_fmt(r.get('rust_over_floor')):>12}{_fmt(r.get('torch_over_rust_cpu')):>11}"
            f"{_fmt(r.get('rust_over_floor_cpu')):>11}"
        )
        extra = []
        if r.get("torch_ddm_s") is not None:
            extra.append(f"ddm torch step {_fmt(r['torch_ddm_s'], 's')}")
        if r.get("rust_baseline_s") is not None:
            extra.append(
                f"baseline rust {_fmt(r['rust_baseline_s'], 's')} "
                f"({_fmt(r.get('rust_baseline_over_floor'))} floor; "
                f"cpu: current / baseline {_fmt(r.get('rust_over_baseline_cpu'))}; "
                f"same tokens: {'yes' if r.get('same_tokens_as_baseline') else 'NO'})"
            )
        if r.get("floor_method"):
            extra.append(f"floor by {r['floor_method']}")
        if r.get("rust_over_floor") is not None and r["rust_over_floor"] < 1:
            extra.append("STEP BELOW THE FLOOR: the read pass was not timed at full bandwidth (load?)")
        if r.get("rust_peak_extra_bytes") is not None:
            extra.append(
                f"peak extra: rust {r['rust_peak_extra_bytes'] / 2**20:.2f} MiB "
                f"({100 * r['rust_peak_extra_frac']:.2f}% of the scores)"
            )
        if r.get("torch_peak_extra_bytes") is not None:
            extra.append(f"torch {r['torch_peak_extra_bytes'] / 2**20:.0f} MiB")
        if r.get("rust_tokens_per_s") is not None:
            extra.append(
                f"tokens/s rust {r['rust_tokens_per_s']:.0f} torch {r['torch_tokens_per_s']:.0f}, "
                f"model call {_fmt(r['model_call_s'], 's')}"
            )
        if extra:
            print(f"{'':<24}" + "; ".join(extra))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}" if v < 10 else f"{v * 1e3:.0f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The records as the Markdown table of BENCHMARKS.md (times in ms; ratios on wall and CPU time)."""
    lines = [
        "| case | rust ms | torch ms | floor ms | torch / rust | rust / floor | torch / rust (cpu) "
        "| rust / floor (cpu) | ddm torch step ms | rust peak extra |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        if r["kind"] == "sample":
            continue
        mem = r.get("rust_peak_extra_bytes")
        mem_s = "-" if mem is None else f"{mem / 2**20:.2f} MiB ({100 * r['rust_peak_extra_frac']:.2f}%)"
        lines.append(
            f"| {r['case']} | {_ms(r['rust_s'])} | {_ms(r['torch_s'])} | {_ms(r['floor_s'])} "
            f"| {_fmt(r['torch_over_rust'])} | {_fmt(r['rust_over_floor'])} "
            f"| {_fmt(r.get('torch_over_rust_cpu'))} | {_fmt(r.get('rust_over_floor_cpu'))} "
            f"| {_ms(r.get('torch_ddm_s'))} | {mem_s} |"
        )
    samples = [r for r in records if r["kind"] == "sample"]
    if samples:
        lines += [
            "",
            "| ddm.sample | shape [B, L, dim] | steps | rust tokens/s | torch tokens/s | rust / torch "
            "| one model call ms |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for r in samples:
            lines.append(
                f"| {r['case']} | {r['shape']} | {r['steps']} | {r['rust_tokens_per_s']:.0f} "
                f"| {r['torch_tokens_per_s']:.0f} | {_fmt(r['rust_tokens_per_s'] / r['torch_tokens_per_s'])} "
                f"| {_ms(r['model_call_s'])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the records here as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (the CI smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per Rust/floor measurement")
    p.add_argument("--torch-repeats", type=int, default=None, help="timed runs per torch measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--only", default=None, help="run only the cases whose name contains this string")
    p.add_argument("--no-sample", action="store_true", help="skip ddm.sample end to end")
    p.add_argument("--no-ddm-torch", action="store_true", help="skip the package's float64 torch steps")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for torch (set_num_threads) and the Rust core (DDM_NUM_THREADS); default: their own",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="an older build of the core (lib_core.so or ddm/_core*.so of another commit): its steps are "
        "timed interleaved with the current ones, in the same process",
    )
    p.add_argument("--table-from", type=Path, help="print the Markdown table of a saved --out file and exit")
    args = p.parse_args(argv)
    if args.table_from is not None:
        records = json.loads(args.table_from.read_text())
        print(markdown_table(records))
        return records
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
        os.environ["DDM_NUM_THREADS"] = str(args.threads)

    if args.quick:
        big, corrupt_shape = (2, 8, 64), (4, 32, 64)
        repeats, torch_repeats = args.repeats or 2, args.torch_repeats or 1
        sample_cases = [(28, 2, 16, 4)]
    else:
        big, corrupt_shape = (4, 256, 50258), (64, 1024, 50258)
        repeats, torch_repeats = args.repeats or 11, args.torch_repeats or 3
        sample_cases = [(28, 4, 256, 32), (50258, 4, 128, 16)]
    info = machine()
    print(
        f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), numpy {info['numpy']}, "
        f"Rust core {info['rust_threads']} threads, "
        f"load average {', '.join(f'{v:.2f}' for v in info['loadavg_start'])}"
    )

    baseline = load_baseline(args.baseline) if args.baseline else None
    records: list[dict[str, Any]] = []

    def wanted(case: str) -> bool:
        return args.only is None or args.only in case

    for step in ("analytic", "euler", "denoise"):
        for absorbing in (True, False):
            if not wanted(f"{step}/{'absorb' if absorbing else 'uniform'}/{big[2]}"):
                continue
            rec = bench_step(step, absorbing, big, repeats, torch_repeats, not args.no_ddm_torch, baseline)
            if not args.no_memory and (not args.quick or (step, absorbing) == ("analytic", True)):
                rust_mem = peak_extra_memory(step, absorbing, big, "rust")
                rec["rust_peak_extra_bytes"] = rust_mem.get("peak_extra_bytes")
                rec["memory_threads"] = rust_mem.get("threads")
                # What the kernel allocates: per thread, an f32 row cache and its f64 block sums (BLOCK = 64).
                rec["rust_scratch_bytes_per_thread"] = 4 * big[2] + 8 * -(-big[2] // 64)
                if rec["rust_peak_extra_bytes"] is not None:
                    rec["rust_peak_extra_frac"] = rec["rust_peak_extra_bytes"] / rec["log_score_bytes"]
                if "error" in rust_mem:
                    rec["memory_error"] = rust_mem["error"]
                if step == "analytic" and not args.quick:  # the reference's footprint, for scale
                    rec["torch_peak_extra_bytes"] = peak_extra_memory(step, absorbing, big, "torch").get(
                        "peak_extra_bytes"
                    )
            records.append(rec)
            print(f"  done {rec['case']}", flush=True)
    for absorbing in (True, False):
        if wanted(f"corrupt/{'absorb' if absorbing else 'uniform'}/{corrupt_shape[2]}"):
            records.append(bench_corrupt(absorbing, corrupt_shape, repeats))
    if not args.no_sample:
        for dim, batch, length, steps in sample_cases:
            if not wanted(f"sample/absorb/{dim}"):
                continue
            rec = bench_sample(dim, batch, length, steps, 1 if args.quick else 3)
            if rec is None:
                break
            records.append(rec)
            print(f"  done {rec['case']}", flush=True)

    info["loadavg_end"] = list(os.getloadavg())
    for r in records:
        for key in ("rust", "torch", "floor", "torch_ddm", "rust_baseline"):
            t = r.get(f"{key}_s")
            r[f"{key}_cpu_s"] = t.cpu if isinstance(t, Timing) else None
            r[f"{key}_s"] = None if t is None else float(t)
        r["torch_over_rust"] = _ratio(r["torch_s"], r["rust_s"])
        r["rust_over_floor"] = _ratio(r["rust_s"], r["floor_s"])
        r["torch_over_rust_cpu"] = _ratio(r["torch_cpu_s"], r["rust_cpu_s"])
        r["rust_over_floor_cpu"] = _ratio(r["rust_cpu_s"], r["floor_cpu_s"])
        if r.get("rust_baseline_s") is not None:
            r["rust_baseline_over_floor"] = _ratio(r["rust_baseline_s"], r["floor_s"])
            r["rust_over_baseline_cpu"] = _ratio(r["rust_cpu_s"], r["rust_baseline_cpu_s"])
        r["quick"] = args.quick
        r["machine"] = info
    print()
    print_table(records)
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in info['loadavg_end'])}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()
