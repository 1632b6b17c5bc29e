"""The benchmark report `benches/compare.py`: its torch reference computes the step of docs/math.md
section 5, and its quick mode
runs once on tiny sizes and writes valid JSON records (CI runs only this; the timings are not checked)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from ddm.sampling import torch_steps

ROOT = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("ddm_bench_compare", ROOT / "benches" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


def _normalised(w: torch.Tensor) -> torch.Tensor:
    w = w.to(torch.float64).clamp(min=0)
    return w / w.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("absorbing", [True, False])
@pytest.mark.parametrize(
    ("ref", "oracle", "level"),
    [
        ("ref_analytic_probs", torch_steps.analytic_step_probs, 0.3),
        ("ref_euler_probs", torch_steps.euler_step_probs, 0.05),
        ("ref_denoise_probs", torch_steps.denoise_step_probs, 0.02),
    ],
)
def test_reference_step_is_the_spec_step(absorbing, ref, oracle, level):
    """The benchmark's float32 SEDD-style reference has the law of the package's float64 step .

    docs/math.md section 5.
    """
    dim = 7
    graph = compare.make_graph(absorbing, dim)
    x, log_score = compare.make_inputs(absorbing, 3, 5, dim, seed=4)
    log_score = log_score + 10.0  # log-scores in [-2, 6): steps that move, and some clipping
    lv = torch.tensor([level, 2 * level, 0.5 * level], dtype=torch.float64)
    got = _normalised(getattr(compare, ref)(absorbing, x, log_score, lv))  # (B, L, dim or dim - 1)
    want = oracle(graph, x, log_score, lv)  # (B, L, dim)
    if ref == "ref_denoise_probs" and absorbing:
        assert torch.all(want[..., -1] == 0)
        want = want[..., :-1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_reference_draws_are_states():
    x, log_score = compare.make_inputs(True, 2, 6, 9, seed=1)
    out = compare.ref_denoise(True, x, log_score, torch.full((2,), 1e-3, dtype=torch.float64))
    assert out.shape == x.shape and int(out.min()) >= 0 and int(out.max()) < 8  # never MASK (= 8)


def test_quick_mode_writes_records(tmp_path, one_torch_thread, monkeypatch):
    monkeypatch.setenv("DDM_NUM_THREADS", "1")  # main() sets it: restored after the test
    out = tmp_path / "quick.json"
    compare.main(["--quick", "--threads", "1", "--out", str(out)])
    records = json.loads(out.read_text())
    assert isinstance(records, list)
    cases = {r["case"] for r in records}
    for step in ("analytic", "euler", "denoise"):
        for graph in ("absorb", "uniform"):
            assert f"{step}/{graph}/64" in cases
    assert {"corrupt/absorb/64", "corrupt/uniform/64"} <= cases
    for r in records:
        assert {"case", "rust_s", "torch_s", "floor_s"} <= set(r)
        assert r["quick"] is True and r["machine"]["rust_threads"] == 1
        for key in ("rust_s", "torch_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["case"], key)
        if r["kind"] == "step":
            assert r["floor_s"] > 0 and r["floor_threads"] == 1
            assert r["floor_method"] in ("np.sum x 1 threads", "np.sum", "torch.sum")
            assert r["rust_over_floor"] == pytest.approx(r["rust_s"] / r["floor_s"])
        else:
            assert r["floor_s"] is None
        assert r["torch_over_rust"] == pytest.approx(r["torch_s"] / r["rust_s"])
    mem = next(r for r in records if r["case"] == "analytic/absorb/64")
    if "memory_error" not in mem:
        # The inputs are 4 KiB of scores: a step's extra peak is a few pages of scratch at most.
        assert 0 <= mem["rust_peak_extra_bytes"] < 4 << 20
    for r in records:
        if r["kind"] == "sample":
            assert r["rust_tokens_per_s"] > 0 and r["torch_tokens_per_s"] > 0


def test_baseline_core_is_timed_beside_the_current_one(tmp_path, one_torch_thread, monkeypatch):
    # The current core passed as its own baseline: timed interleaved, and the same tokens.
    import ddm._core

    monkeypatch.setenv("DDM_NUM_THREADS", "1")
    out = tmp_path / "baseline.json"
    argv = ["--quick", "--threads", "1", "--no-memory", "--no-sample", "--only", "analytic/"]
    compare.main([*argv, "--baseline", ddm._core.__file__, "--out", str(out)])
    records = json.loads(out.read_text())
    assert {r["case"] for r in records} == {"analytic/absorb/64", "analytic/uniform/64"}
    for r in records:
        assert r["rust_baseline_s"] > 0 and r["same_tokens_as_baseline"] is True
        assert r["rust_baseline_over_floor"] == pytest.approx(r["rust_baseline_s"] / r["floor_s"])


@pytest.mark.parametrize("threads", [1, 3])
def test_floor_reads_with_the_steps_threads(monkeypatch, threads):
    """The floor's read pass runs on as many threads at once as the step (each sums its own contiguous
    chunk), and together they read the whole array exactly once."""
    import threading

    barrier = threading.Barrier(threads, timeout=30)  # broken unless `threads` chunks are summed at once
    seen: list[tuple[int, int]] = []
    real = compare.chunk_sum

    def chunk_sum(chunk):
        seen.append((threading.get_ident(), chunk.size))
        barrier.wait()
        return real(chunk)

    monkeypatch.setattr(compare, "chunk_sum", chunk_sum)
    arr = torch.arange(1001, dtype=torch.float32).reshape(7, 11, 13)
    reader = compare.StreamingRead(threads)
    try:
        assert reader(arr.numpy()) == float(arr.sum())
    finally:
        reader.close()
    assert len(seen) == threads and len({ident for ident, _ in seen}) == threads
    assert sum(size for _, size in seen) == arr.numel()
    seen.clear()
    monkeypatch.setenv("DDM_NUM_THREADS", str(threads))
    barrier.reset()
    rec = compare.bench_step("analytic", True, (2, 4, 8), 1, 1, False)  # the step's threads: DDM_NUM_THREADS
    assert rec["floor_threads"] == threads and len({ident for ident, _ in seen}) == threads
    assert len(seen) == 2 * threads  # a warm-up pass and a timed one


@pytest.fixture
def one_torch_thread():
    """torch on one thread: on a loaded 2-core machine two spinning OpenMP threads run a tiny model ~30x
    slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_asv_suite_runs_once(one_torch_thread):
    """The asv benchmarks import and each one runs once (asv itself is not needed for this)."""
    import itertools

    assert (
        json.loads((ROOT / "benches" / "asv" / "asv.conf.json").read_text())["benchmark_dir"] == "benchmarks"
    )
    spec = importlib.util.spec_from_file_location(
        "ddm_asv_bench", ROOT / "benches" / "asv" / "benchmarks" / "bench_ddm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = 0
    for cls in (module.KernelWrappers, module.Sample, module.TrainStep):
        params = getattr(cls, "params", None)
        if params is None:
            combos = [()]
        elif isinstance(params, tuple):
            combos = [c for c in itertools.product(*params) if c[1] < 1000]  # small dims only: fast
        else:
            combos = [(p,) for p in params]
        for combo in combos:
            bench = cls()
            bench.setup(*combo)
            for name in dir(cls):
                if name.startswith("time_"):
                    getattr(bench, name)(*combo)
                    ran += 1
    assert ran == 2 * 4 + 2 + 1


def test_eval_variance_runs_once() -> None:
    """`benches/eval_variance.py` (issue 17): both designs on a tiny model, once (figures not checked)."""
    spec = importlib.util.spec_from_file_location("ddm_bench_eval", ROOT / "benches" / "eval_variance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from ddm.graphs import Absorbing
    from ddm.model import ScoreModel
    from ddm.schedules import LogLinear

    cfg = {"hidden": 16, "heads": 2, "blocks": 1, "cond_dim": 8, "seq_len": 8, "dropout": 0.0}
    model = ScoreModel(cfg, Absorbing(5), LogLinear()).eval()
    x = torch.randint(0, 5, (2, 8), generator=torch.Generator().manual_seed(0))
    for design in ("masks", "strata"):
        r = module.block_sd(model, x, design, num_t=4, reps=2, seed=0)
        assert r["design"] == design and r["calls_per_block"] <= 4 and math.isfinite(r["mc_sd"])


@pytest.mark.slow
def test_user_wait_runs_from_this_tree(tmp_path, one_torch_thread, monkeypatch) -> None:
    """`benches/user_wait.py` (what `make bench` runs after `make demo`) on a checkpoint trained here:
    every variant runs this tree, so a fresh clone needs no old commit. Quick mode, one round. The
    checkpoint is given relative to the working directory, as `make bench` gives `runs/demo` (the workers
    run elsewhere)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny import tiny_run
    from ddm.training import train

    train(tiny_run(tmp_path / "run", seq_len=32))
    spec = importlib.util.spec_from_file_location("ddm_bench_wait", ROOT / "benches" / "user_wait.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "wait.json"
    monkeypatch.chdir(tmp_path)
    argv = [
        "--checkpoint",
        "run",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--steps",
        "2",
        "--quick",
    ]
    report = module.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text())["best"] == report["best"]
    assert set(report["results"]) == {"OMP active", "default", "cpu_bf16"}
    for name, rows in report["results"].items():
        assert rows[0]["ddm"].startswith(str(ROOT / "python")), name
        assert rows[0]["forward_ms"] > 0 and rows[0]["demo_sample_tokens_per_s"] > 0
    assert report["results"]["OMP active"][0]["omp_wait_policy"] == "ACTIVE"
    assert report["best"]["default"]["loop28_rust_tokens_per_s"] > 0
