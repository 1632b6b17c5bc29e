"""Smoke test of an installed ddm wheel (`make wheel-test`; not collected by pytest).

Run it with the interpreter of a fresh virtual environment that has only the wheel installed, from a
directory outside the source tree: it fails if `ddm` is imported from a checkout, if the Rust core did
not load, or if a module or a data file is missing from the wheel. It ends with the closing line of a
test runner, `N passed, N failed`, on a line of its own, and exits non-zero on any failure.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS: list[tuple[str, bool]] = []


def check(name):
    def run(fn):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            traceback.print_exc()
            RESULTS.append((name, False))
            print(f"FAILED {name}", flush=True)
        else:
            RESULTS.append((name, True))
            print(f"PASSED {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
        return fn

    return run


@check("import: ddm comes from site-packages, not a source tree")
def _import():
    import ddm

    path = Path(ddm.__file__).resolve()
    assert path.parents[1].name == "site-packages", f"ddm imported from {path}, not from an installed wheel"
    prefix = Path(sys.prefix).resolve()
    assert prefix in path.parents, f"ddm imported from {path}, not from this environment ({prefix})"
    print(f"  ddm {ddm.__version__} from {path.parent}")


@check("rust core: ddm._core loaded")
def _core():
    from ddm.sampling.sampler import native_available

    assert native_available(), "the Rust core ddm._core did not load"
    import ddm._core as core

    assert Path(core.__file__).name.startswith("_core.abi3"), f"not the abi3 build: {core.__file__}"


@check("bundled GPT-2 tokenizer: encode and decode")
def _gpt2():
    from ddm.tokenizers import get

    tok = get("gpt2")
    ids = tok.encode("Hello world, said Hamlet.")
    assert ids[:2] == [15496, 995], ids  # GPT-2's ids of "Hello", " world"
    assert tok.decode(ids) == "Hello world, said Hamlet."


@check("bundled Hamlet text")
def _hamlet():
    from ddm.assets import bundled_text

    text = bundled_text()
    assert len(text) > 100_000 and "Hamlet" in text, len(text)


MODEL = {}


@check("train 5 steps of a tiny model")
def _train():
    import ddm

    run_dir = Path(tempfile.mkdtemp(prefix="ddm-wheel-smoke-"))
    cfg = dict(
        run_dir=str(run_dir),
        hidden=32,
        heads=2,
        blocks=1,
        cond_dim=16,
        seq_len=32,
        batch_size=4,
        steps=5,
        warmup_steps=2,
        log_every=1,
        eval_every=0,
        save_every=5,
        progress=False,
        plot=False,
    )
    path = ddm.train(cfg)
    MODEL["model"] = ddm.load(path)
    assert (path / "model.safetensors").is_file(), path


@check("sample 4 sequences on the Rust backend")
def _sample():
    import ddm

    model = MODEL["model"]
    x, stats = ddm.sample(model, 8, batch_size=4, seed=0, backend="rust", return_stats=True)
    assert tuple(x.shape) == (4, model.seq_len) and stats.backend == "rust", (x.shape, stats)
    assert int(x.min()) >= 0 and int(x.max()) < model.tokenizer.vocab_size
    print("  " + repr(model.tokenizer.decode(x[0].tolist())))


@check("Hub layout: save_pretrained, then ddm.load of the directory")
def _hub():
    import ddm
    import torch

    model = MODEL["model"]
    out = model.save_pretrained(Path(tempfile.mkdtemp(prefix="ddm-wheel-hub-")) / "m")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    back = ddm.ScoreModel.from_pretrained(out)
    x = torch.randint(0, model.tokenizer.vocab_size, (2, model.seq_len))
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([0.5, 2.0])), back(x, torch.tensor([0.5, 2.0])))


@check("console scripts: ddm and ddm-lm-eval installed")
def _scripts():
    bin_dir = Path(sys.executable).parent
    for name in ("ddm", "ddm-lm-eval"):
        assert (bin_dir / name).is_file(), f"{name} is not in {bin_dir}"


def main() -> int:
    passed = sum(ok for _, ok in RESULTS)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
