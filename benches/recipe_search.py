"""A recipe search on the bundled Hamlet: the demo configuration with changes, one run after the other.

Each run is `ddm.demo.DEMO_CONFIG` with the overrides of its spec, trained for a fixed number of steps
(so the bound does not depend on how loaded the machine is), then scored with the demo's own estimator:
`likelihood_bound` on the whole held-out tail with 16 times per block (the `masks` design for the absorbing
graph). One JSON line per run, with the training seconds, the training seconds per step measured in the same
process and the load average, so that a budget in wall clock converts to steps on a quiet machine.

Usage:
    python benches/recipe_search.py --out runs.jsonl 'base' 'lr2e-3:lr=2e-3' \\
        'masked-ti:objective=masked,time_conditioning=false,lr=2e-3,steps=700'

A spec is `NAME[:key=value,...]` with any `TrainConfig` field (values parsed as JSON, else as strings).
The base moves with the demo: the rows of docs/quality_results/objectives.md measured before 2026-12-03
had the 192-wide model with uniform times, so their specs need `hidden=0,t_sampling=uniform` added now.

Equal wall clock instead of equal steps: `--budget-from SPEC` times the optimizer step of SPEC and of every
run side by side first (`_budget.seconds_per_step`, on a quiet machine), takes SPEC's `steps` times its
step time as the budget, and gives each run the steps that fill it (SPEC itself is not trained). E.g. the
old demo's training time (issue 18's "no more wall time than today"):

    python benches/recipe_search.py --budget-from \
        'old-demo:objective=diffusion,time_conditioning=true,lr=1e-3,cpu_bf16=false,steps=320' 'demo' ...
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ddm
from _budget import seconds_per_step, steps_for
from ddm.data import load_corpus
from ddm.demo import DEMO_CONFIG
from ddm.eval import likelihood_bound
from ddm.training import TrainConfig, train


def parse_spec(spec: str) -> tuple[str, dict]:
    """`"name:key=value,key=value"` -> `(name, {key: value})`, values parsed as JSON where they parse."""
    name, _, rest = spec.partition(":")
    over: dict = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: {item!r} is not key=value")
        try:
            over[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            over[key.strip()] = value
    return name, over


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="+", help="NAME[:key=value,...]")
    ap.add_argument("--out-dir", default="/tmp/recipe", help="run directories go here")
    ap.add_argument("--out", default="", help="append one JSON line per run to this file")
    ap.add_argument("--num-t", type=int, default=16, help="times per held-out block")
    ap.add_argument("--budget-from", default="", help="SPEC whose steps x step time is every run's budget")
    args = ap.parse_args()
    specs = [parse_spec(spec) for spec in args.specs]
    probe: dict = {}
    if args.budget_from:
        ref_name, ref_over = parse_spec(args.budget_from)
        configs = {n: {**DEMO_CONFIG, **o} for n, o in [(ref_name, ref_over), *specs]}
        load = os.getloadavg()
        probe = seconds_per_step(configs, Path(args.out_dir))
        budget = probe[ref_name] * configs[ref_name]["steps"]
        print(json.dumps({"probe_s_per_step": probe, "budget_s": round(budget, 1), "load": load}), flush=True)
        specs = [(n, {**o, "steps": steps_for(budget, probe[n])}) for n, o in specs]
    for name, over in specs:
        run = Path(args.out_dir) / name
        cfg = TrainConfig.from_dict(
            {
                **DEMO_CONFIG,
                "run_dir": str(run),
                "progress": False,
                "plot": False,
                "save_every": 10**9,
                **over,
            }
        )
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        ckpt = train(cfg)
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        tps = [r["tokens_per_s"] for r in log if "tokens_per_s" in r]
        model = ddm.load(ckpt)
        corpus = load_corpus(cfg.data, run / "data", tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction)
        t1 = time.perf_counter()
        b = likelihood_bound(model, corpus.val_blocks(cfg.seq_len), num_t=args.num_t, seed=0, batch_size=128)
        rec = dict(
            name=name,
            overrides=over,
            probe_s_per_step=round(probe[name], 4) if probe else None,
            steps=cfg.steps,
            bits=round(b.bits_per_token, 4),
            stderr=round(b.stderr_bits, 4),
            train_s=round(wall, 1),
            s_per_step=round(wall / cfg.steps, 4),
            median_tokens_per_s=round(sorted(tps)[len(tps) // 2]) if tps else None,
            eval_s=round(time.perf_counter() - t1, 1),
            load_start=[round(v, 2) for v in load0],
            load_end=[round(v, 2) for v in os.getloadavg()],
            threads=__import__("torch").get_num_threads(),
        )
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
