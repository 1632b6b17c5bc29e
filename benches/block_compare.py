"""Block diffusion (issue 15) on the bundled Hamlet: block sizes at equal training wall clock.

Trains, one after the other with the same seed and the demo's recipe (`ddm.demo.DEMO_CONFIG`: tiny,
seq_len 128, batch 32, lr 2e-3, EMA 0.99, bf16 where native), block models with the masked loss at block
sizes 4, 16 and 128 (= seq_len: the masked-diffusion model) and the autoregressive baseline, each for the
same training wall clock: `--budget` seconds at the seconds per step of a side-by-side probe
(`_budget.py`), so that the steps do not depend on the load while a run trains. Then for each: the
held-out bound (the AR model: its exact NLL) on `--eval-blocks` blocks with 8 t each; sampling tokens/s
with and without the key/value cache at `max_len = 4 x block` and at 256 (the context slides past 128;
not for block 128, whose window is its own block), after a warm-up, with a check that both give the same
tokens; generative perplexity (judge: the AR model), unigram entropy and the real-word fraction
(`real_word_fraction`, against the training text) of 16 samples of 128 characters. Prints one JSON line
per measurement with the load average. Minutes per run on 2 shared cores; run it alone.

Usage: `python benches/block_compare.py [--budget 150] [--out-dir /tmp/blockcmp]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import ddm
import torch
from _budget import seconds_per_step, steps_for
from ddm.data import load_corpus
from ddm.demo import DEMO_CONFIG
from ddm.eval import likelihood_bound
from ddm.eval.metrics import exact_nll, gen_perplexity, real_word_fraction, unigram_entropy
from ddm.training import TrainConfig, train

RUNS = {
    "block4": {"objective": "block", "block_size": 4},
    "block16": {"objective": "block", "block_size": 16},
    "block128": {"objective": "block", "block_size": 128},
    "ar": {"objective": "autoregressive"},
}


def _load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def _train(run: Path, over: dict, steps: int) -> Path:
    shutil.rmtree(run, ignore_errors=True)
    cfg = {**DEMO_CONFIG, "run_dir": str(run), "steps": steps, "save_every": steps, "progress": False,
           "plot": False, **over}  # fmt: skip
    return train(TrainConfig.from_dict(cfg))


def _timed_sample(model, **kw) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    x = ddm.sample(model, **kw)
    return x, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=150.0, help="training seconds per model")
    ap.add_argument("--out-dir", default="/tmp/blockcmp")
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16, help="sampling steps per block (gen-PPL samples)")
    ap.add_argument("--time-steps", type=int, default=8, help="sampling steps per block (timings)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out_dir)
    ckpts = {}
    load0 = _load()
    s_per_step = seconds_per_step({n: {**DEMO_CONFIG, **o} for n, o in RUNS.items()}, out)
    print(json.dumps({"probe_s_per_step": s_per_step, "load_start": load0, "load": _load()}), flush=True)
    for name, over in RUNS.items():
        step = steps_for(args.budget, s_per_step[name])
        t0 = time.perf_counter()
        ckpts[name] = _train(out / name, over, step)
        state = json.loads((ckpts[name] / "state.json").read_text())
        rec = {"run": name, "train_steps": step, "train_s": round(state["elapsed_s"], 1),
               "wall_s": round(time.perf_counter() - t0, 1), "load": _load()}  # fmt: skip
        print(json.dumps(rec), flush=True)
    corpus = load_corpus("hamlet", out / "data", tokenizer="char", val_fraction=0.1)
    val = corpus.val_blocks(128)[: args.eval_blocks]
    vocabulary = corpus.tokenizer.decode(corpus.train_tokens.tolist())
    judge = ddm.load(ckpts["ar"])
    nll = exact_nll(judge, val)
    print(
        json.dumps({"run": "ar", "held_out_bits": nll.bits_per_token, "stderr": nll.stderr_bits}), flush=True
    )
    for name in ("block4", "block16", "block128"):
        model = ddm.load(ckpts[name])
        b = likelihood_bound(model, val, num_t=8, seed=0, batch_size=64)
        rec = {"run": name, "held_out_bits": b.bits_per_token, "stderr": b.stderr_bits, "load": _load()}
        print(json.dumps(rec), flush=True)
        bs = model.block_size
        for kv in (True, False):  # warm-up (first calls of the Rust core and of torch's kernels)
            ddm.sample(model, 2, batch_size=1, max_len=2 * bs, seed=0, kv_cache=kv)
        for max_len in sorted({4 * bs, 256} if bs < 128 else {4 * bs}):
            kw = dict(steps=args.time_steps, batch_size=8, max_len=max_len, seed=1)
            xa, ta = _timed_sample(model, kv_cache=True, **kw)
            xb, tb = _timed_sample(model, kv_cache=False, **kw)
            rec = {"run": name, "max_len": max_len, "batch": 8, "steps_per_block": args.time_steps,
                   "tok_s_cache": 8 * max_len / ta, "tok_s_no_cache": 8 * max_len / tb,
                   "speedup": tb / ta, "identical": bool(torch.equal(xa, xb)), "load": _load()}  # fmt: skip
            print(json.dumps(rec), flush=True)
        x = ddm.sample(model, steps=args.steps, batch_size=16, max_len=128, seed=2)
        texts = [model.tokenizer.decode(r) for r in x.tolist()]
        rec = {"run": name, "gen_ppl": gen_perplexity(x, judge), "entropy": unigram_entropy(x),
               "real_words": real_word_fraction(texts, vocabulary), "sample": texts[0][:80]}  # fmt: skip
        print(json.dumps(rec), flush=True)
    held = [corpus.tokenizer.decode(r) for r in val[:16].tolist()]
    rec = {"run": "data", "gen_ppl": gen_perplexity(val[:16], judge), "entropy": unigram_entropy(val[:16]),
           "real_words": real_word_fraction(held, vocabulary)}  # fmt: skip
    print(json.dumps(rec), flush=True)
    print(json.dumps({"load_end": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
