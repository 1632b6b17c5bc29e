"""Issue 30, a small CPU measurement of classifier-free and prompt guidance on a synthetic labelled corpus.

Two classes of documents over the letters a..h: class "low" draws each letter i.i.d. with 70% of the mass
on a..d, class "high" with 70% on e..h (uniform within each half). The exact class laws give an exact
Bayes classifier (the log-likelihood ratio of a sequence) and the exact per-letter NLL of a sample under
the asked class. A tiny absorbing model is trained with --label-field (cond_dropout 0.1); then, for
gamma in (0, 1, 2, 4), 64 samples per class are scored: the fraction of letters from the asked class's
half (real data: 0.70), the Bayes classifier's accuracy, and the NLL per letter under the asked class's
law (real data: its entropy). A prompt-guidance row: the same model with no label, a prefix of 8 letters
drawn from one class, and the fraction of the 24 free letters from that class's half.

    nohup nice -n 19 python benches/guidance_synthetic.py --out docs/quality_results/guidance > log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import ddm
import numpy as np
import torch
from ddm.training import train

LETTERS = "abcdefgh"
HALF = {"low": set("abcd"), "high": set("efgh")}
P_IN = 0.7


def class_law(name: str) -> np.ndarray:
    inside = np.array([c in HALF[name] for c in LETTERS])
    return np.where(inside, P_IN / 4, (1 - P_IN) / 4)


def write_corpus(path: Path, docs: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for k in range(docs):
            name = ("low", "high")[k % 2]
            text = "".join(rng.choice(list(LETTERS), size=length, p=class_law(name)))
            f.write(json.dumps({"text": text, "label": name}) + "\n")


def score(texts: list[str], name: str) -> dict[str, float]:
    law = {n: dict(zip(LETTERS, class_law(n), strict=True)) for n in HALF}
    other = "high" if name == "low" else "low"
    frac, acc, nll = [], [], []
    for t in texts:
        t = [c for c in t if c in LETTERS]
        if not t:
            continue
        frac.append(np.mean([c in HALF[name] for c in t]))
        ll = {n: sum(math.log(law[n][c]) for c in t) for n in HALF}
        acc.append(float(ll[name] > ll[other]))
        nll.append(-ll[name] / len(t))
    return {
        "in_class": float(np.mean(frac)),
        "bayes_acc": float(np.mean(acc)),
        "nll_per_letter": float(np.mean(nll)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/quality_results/guidance")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--run", default="/tmp/guidance_synthetic")
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    data = run / "synthetic.jsonl"
    write_corpus(data, docs=400, length=256, seed=0)
    t0 = time.time()
    ckpt = train(dict(run_dir=str(run / "model"), data=str(data), label_field="label", cond_dropout=0.1,
                      hidden=64, heads=2, blocks=2, cond_dim=32, seq_len=32, batch_size=32, steps=args.steps,
                      warmup_steps=50, lr=1e-3, eval_every=0, eval_sequences=4, save_every=args.steps,
                      progress=False, plot=False, dropout=0.0))  # fmt: skip
    train_s = time.time() - t0
    model = ddm.load(ckpt)
    tok = model.tokenizer
    rows = []
    for gamma in (0.0, 1.0, 2.0, 4.0):
        for name in ("low", "high"):
            x = ddm.sample(model, 32, batch_size=args.samples, seed=1, label=name, guidance=gamma)
            rows.append(
                {
                    "kind": "label",
                    "gamma": gamma,
                    "label": name,
                    **score([tok.decode(r) for r in x.tolist()], name),
                }
            )
            print(rows[-1], flush=True)
    rng = np.random.default_rng(5)
    for gamma in (1.0, 2.0, 4.0):
        for name in ("low", "high"):
            prefix = "".join(rng.choice(list(LETTERS), size=8, p=class_law(name)))
            x = ddm.sample(
                model, 32, batch_size=args.samples, seed=2, prefix=tok.encode(prefix), guidance=gamma
            )
            free = [tok.decode(r[8:]) for r in x.tolist()]
            rows.append({"kind": "prompt", "gamma": gamma, "label": name, **score(free, name)})
            print(rows[-1], flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    result = {"train_seconds": train_s, "steps": args.steps, "loadavg": load, "rows": rows}
    (out / "synthetic.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "| kind | gamma | label | in-class letters | Bayes acc | NLL/letter (asked class) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        figures = f"{r['in_class']:.3f} | {r['bayes_acc']:.3f} | {r['nll_per_letter']:.3f}"
        lines.append(f"| {r['kind']} | {r['gamma']:g} | {r['label']} | {figures} |")
    (out / "synthetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
