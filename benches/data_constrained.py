"""Small data, many epochs: diffusion against the AR baseline, each judged by its best held-out (issue 32).

One command trains a diffusion model and the autoregressive baseline on the same corpus, for the same
wall clock (`--minutes`, per model) or the same epochs (`--epochs`), both reading the training split in the
epoch order (`data_order = "epochs"`: every window once per epoch, reshuffled by epoch), both evaluating
the held-out split every `--eval-every-epochs` epochs (the diffusion model: its bound; AR: its exact NLL;
both on the EMA weights, on the same `--eval-sequences` held-out blocks) and both keeping their best
checkpoint (`keep_best`). A model that overfits is judged by its best evaluation, not its last.

Equal wall clock on a shared machine (`_budget.py`): a probe times each model's optimizer step side by side
first, then each trains for `minutes * 60 / (seconds per step)` steps, so the step counts are those of an
equal budget even if the load changes during a run (the evaluations are not counted).

Writes to `--out` (default docs/quality_results/data_constrained/):
- `results.json`: per model its config, steps, the evaluations (step, epoch, tokens seen, bits per token,
  standard error), its best, the training seconds and the machine load (/proc/loadavg) before and after;
- `table.md`: corpus x model x size x regularisation x epochs at best x best held-out, and the ratio of
  the bests (diffusion / AR: the issue's goal is at most 1.00);
- `heldout_vs_epochs.png`: held-out bits per token against epochs for both, each best marked;
- `command.txt`: the command that made them.

Usage:
    nohup nice -n 19 python benches/data_constrained.py --minutes 60 --eval-every-epochs 5 &
    python benches/data_constrained.py --epochs 100 --eval-every-epochs 5 --set-ar dropout=0.2
`--set-diffusion KEY=VALUE` and `--set-ar KEY=VALUE` (repeatable) change any TrainConfig field of one model
(dropout, weight_decay, hidden, blocks, graph, early_stop, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import ddm
import torch
from _budget import seconds_per_step, steps_for
from ddm.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
# Both models: the demo's width (128: 3 blocks, 4 heads), batch 32 of 128 characters, the epoch order
COMMON = dict(
    model="tiny",
    hidden=128,
    seq_len=128,
    batch_size=32,
    data_order="epochs",
    keep_best=True,
    eval_every=0,
    log_every=20,
    progress=False,
    plot=False,
    cpu_bf16=True,
    ema_decay=0.99,
)
MODELS = {
    # the demo's recipe (ddm.demo.DEMO_CONFIG): the masked NELBO, a time-independent network, masks-first
    # times, lr 2e-3, no dropout
    "diffusion": dict(
        objective="masked", time_conditioning=False, t_sampling="masks", lr=2e-3, warmup_steps=30, dropout=0.0
    ),
    # the AR baseline of the probe: the same blocks, causal, dropout 0.1
    "ar": dict(objective="autoregressive", lr=2e-3, warmup_steps=30, dropout=0.1),
}


def _overrides(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs as TrainConfig fields (values coerced by TrainConfig.from_dict)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set-*: expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _evals(run: Path) -> list[dict]:
    """The evaluation records of a run, each with the training seconds (`elapsed_s`, the optimizer steps'
    own time, interpolated between the training records) it had taken."""
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [(0, 0.0)] + [(r["step"], r["elapsed_s"]) for r in recs if "loss" in r]
    keys = ("step", "epoch", "tokens_seen", "eval_bits_per_token", "eval_stderr_bits")
    out = []
    for r in (r for r in recs if "eval_bits_per_token" in r):
        pairs = zip(train, [*train[1:], (math.inf, train[-1][1])], strict=True)  # past the last: its time
        (s0, e0), (s1, e1) = next((a, b) for a, b in pairs if a[0] <= r["step"] <= b[0])
        elapsed = e0 if s1 == math.inf else e0 + (e1 - e0) * (r["step"] - s0) / max(s1 - s0, 1)
        out.append({**{k: r[k] for k in keys}, "elapsed_s": round(elapsed, 4)})  # a tiny run: milliseconds
    return out


def ratios_by_minutes(records: list[dict], minutes=(5, 15, 30, 60)) -> dict[int, float]:
    """The ratio of the bests (diffusion / AR) among the evaluations within the first `t` minutes of each
    model's training time, for each `t` both runs reached."""
    by = {r["model"]: r["evals"] for r in records}
    out = {}
    for t in minutes:
        within = {
            m: [e["eval_bits_per_token"] for e in ev if e["elapsed_s"] <= t * 60] for m, ev in by.items()
        }
        reached = all(ev and ev[-1]["elapsed_s"] >= t * 60 * 0.98 for ev in by.values())
        if reached and within.get("diffusion") and within.get("ar"):
            out[t] = min(within["diffusion"]) / min(within["ar"])
    return out


def train_one(name: str, cfg: dict, steps: int | None, runs: Path) -> dict:
    """Trains one model (a fresh run directory `runs/<name>`) and returns its record."""
    run = runs / name
    shutil.rmtree(run, ignore_errors=True)
    fields = {**cfg, "run_dir": str(run)}
    if steps is not None:
        fields.update(steps=steps, epochs=0.0, save_every=steps)
    else:
        fields.update(save_every=10**9)
    config = TrainConfig.from_dict(fields)
    load0, t0 = _loadavg(), time.perf_counter()
    train(config)
    wall = time.perf_counter() - t0
    evals = _evals(run)
    best = min(evals, key=lambda r: r["eval_bits_per_token"]) if evals else None
    params = sum(p.numel() for p in ddm.load(run).parameters())  # the trained model's size
    return dict(
        model=name,
        config={k: v for k, v in fields.items() if k != "run_dir"},
        params=params,
        steps=evals[-1]["step"] if evals else None,
        evals=evals,
        best=best,
        last=evals[-1] if evals else None,
        wall_s=round(wall, 1),
        load_start=load0,
        load_end=_loadavg(),
        threads=torch.get_num_threads(),
    )


def regularisation(cfg: dict) -> str:
    """The regularisation of a config, in a few words."""
    parts = [f"dropout {cfg.get('dropout', 0.1)}"]
    if cfg.get("weight_decay"):
        parts.append(f"wd {cfg['weight_decay']}")
    if cfg.get("early_stop"):
        parts.append(f"early stop {cfg['early_stop']}")
    if cfg.get("graph", "absorbing") != "absorbing":
        parts.append(f"graph {cfg['graph']}")
    return ", ".join(parts)


def write_table(records: list[dict], path: Path) -> None:
    """The table (markdown) of the records, with the ratio of the bests."""
    lines = [
        "| corpus | model | params | size | regularisation | steps | epochs trained | epochs at best | "
        "best held-out (bits/char) | last held-out | train s | load (1/5/15 min) before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        c, b, last = r["config"], r["best"], r["last"]
        size = f"{c.get('model')}, width {c.get('hidden')}" + (
            f", {c['blocks']} blocks" if c.get("blocks") else ""
        )
        lines.append(
            f"| {c.get('data', 'hamlet')} | {r['model']} ({c['objective']}) | {r['params']:,} | {size} | "
            f"{regularisation(c)} | {r['steps']} | {last['epoch']:.1f} | {b['epoch']:.1f} | "
            f"{b['eval_bits_per_token']:.3f} +- {b['eval_stderr_bits']:.3f} | "
            f"{last['eval_bits_per_token']:.3f} | {r['wall_s']:.0f} | {r['load_start']} -> {r['load_end']} |"
        )
    by = {r["model"]: r for r in records}
    if "diffusion" in by and "ar" in by:
        ratio = by["diffusion"]["best"]["eval_bits_per_token"] / by["ar"]["best"]["eval_bits_per_token"]
        lines += ["", f"Ratio of the bests (diffusion bound / AR NLL): **{ratio:.3f}** (goal: at most 1.00)."]
        at = ratios_by_minutes(records)
        if at:
            lines.append(
                "Within the first t minutes of training: "
                + ", ".join(f"{t} min: {v:.3f}" for t, v in at.items())
            )
    path.write_text("\n".join(lines) + "\n")


def draw(records: list[dict], path: Path, title: str) -> None:
    """Held-out bits per token against epochs for every model, each best marked."""
    import matplotlib  # the `plot` extra, needed only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(records):
        ev = r["evals"]
        what = "bound" if r["config"]["objective"] != "autoregressive" else "NLL"
        ax.errorbar(
            [e["epoch"] for e in ev],
            [e["eval_bits_per_token"] for e in ev],
            yerr=[2 * e["eval_stderr_bits"] for e in ev],
            fmt="o-",
            ms=3,
            color=f"C{i}",
            label=f"{r['model']}: held-out {what} ({r['params'] / 1e6:.2f}M params)",
        )
        b = r["best"]
        ax.plot(b["epoch"], b["eval_bits_per_token"], "*", ms=14, color=f"C{i}", mec="k")
        ax.annotate(
            f"best {b['eval_bits_per_token']:.3f} @ epoch {b['epoch']:.0f}",
            (b["epoch"], b["eval_bits_per_token"]),
            textcoords="offset points",
            xytext=(5, 8),
            fontsize=8,
        )
    ax.set_xlabel("epochs of the training split")
    ax.set_ylabel("held-out bits / character (EMA, +-2 s.e.)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(out: Path, results: dict) -> None:
    """Writes results.json, table.md and heldout_vs_epochs.png of `results`."""
    records = results["records"]
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_table(records, out / "table.md")
    budget = f"{results['minutes']:g} min" if results.get("minutes") else f"{results.get('epochs'):g} epochs"
    data = records[0]["config"].get("data", "hamlet")
    title = f"{data}: held-out vs epochs, {budget} per model; load {records[-1]['load_end']}"
    draw(records, out / "heldout_vs_epochs.png", title)


def redraw(out: Path, runs: Path) -> None:
    """Rebuilds the outputs from `out/results.json` (evaluations re-read from `runs/<model>/log.jsonl`
    where that run is still there, for the training seconds of each)."""
    results = json.loads((out / "results.json").read_text())
    for r in results["records"]:
        if (runs / r["model"] / "log.jsonl").is_file():
            r["evals"] = _evals(runs / r["model"])
    render(out, results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training wall clock per model (equal steps' time)")
    budget.add_argument("--epochs", type=float, help="epochs per model")
    ap.add_argument("--data", default="hamlet", help="corpus (a TrainConfig data value)")
    ap.add_argument("--eval-every-epochs", type=float, default=2.0)
    ap.add_argument("--eval-sequences", type=int, default=64, help="held-out blocks per evaluation")
    ap.add_argument("--eval-num-t", type=int, default=16, help="times per block of the diffusion bound")
    ap.add_argument("--models", default="diffusion,ar", help=f"among {', '.join(MODELS)}")
    ap.add_argument("--set-diffusion", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--set-ar", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "quality_results" / "data_constrained"))
    ap.add_argument("--run-dir", default="/tmp/data_constrained", help="the runs (checkpoints, logs)")
    ap.add_argument(
        "--redraw", action="store_true", help="only rebuild table.md and the plot from results.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.redraw:
        redraw(out, Path(args.run_dir))
        return
    out.mkdir(parents=True, exist_ok=True)
    command = "python benches/data_constrained.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (out / "command.txt").write_text(command + "\n")
    shared = dict(
        COMMON,
        data=args.data,
        eval_every_epochs=args.eval_every_epochs,
        eval_sequences=args.eval_sequences,
        eval_num_t=args.eval_num_t,
    )
    sets = {"diffusion": _overrides(args.set_diffusion), "ar": _overrides(args.set_ar)}
    names = [n for n in args.models.split(",") if n]
    configs = {n: {**shared, **MODELS[n], **sets[n]} for n in names}
    steps: dict[str, int | None] = {n: None for n in names}
    probe = None
    if args.minutes is not None:
        probe = seconds_per_step(configs, Path(args.run_dir))
        steps = {n: steps_for(args.minutes * 60, probe[n]) for n in names}
    else:
        for cfg in configs.values():
            cfg["epochs"] = args.epochs
    records: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in names:
        records.append(train_one(name, configs[name], steps[name], Path(args.run_dir)))
        meta = dict(command=command, started=started, probe_s_per_step=probe, minutes=args.minutes)
        render(out, dict(meta, epochs=args.epochs, records=records))
        print(json.dumps({k: records[-1][k] for k in ("model", "steps", "best", "wall_s", "load_end")}))
    print(command)


if __name__ == "__main__":
    main()
