"""The variance of the training loss under uniform, stratified and masks times, side by side (issue 18).

For a checkpoint trained on the bundled Hamlet text, evaluates the keyed training loss of the global batch
(the same data rows and corruption keys as `ddm train`) at `--batches` steps with `t_sampling="uniform"`,
`"stratified"` and `"masks"`, and prints the mean and the standard deviation of the batch-mean loss, and the
variance ratios to uniform times. Stratified times keep the mean (each t is uniform) and cut the variance;
the masks design (absorbing graph) draws the masked count first and weights the loss, with the same mean
up to the `[0, eps_t]` end that uniform times leave out.

Usage: `python benches/t_sampling_variance.py CHECKPOINT [--batches 40] [--batch-size 32]`
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ddm
import torch
from ddm.data import load_corpus
from ddm.training.distributed import keyed_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ddm.load(args.checkpoint)
    corpus = load_corpus("hamlet", Path(tempfile.mkdtemp()), tokenizer="char", val_fraction=0.1)
    b, length = args.batch_size, model.seq_len
    subs = bool(getattr(model.config, "subs", False))
    fn, objective = (model.log_probs, "masked") if subs else (model, "diffusion")
    std = {}
    with torch.no_grad():
        for ts in ("uniform", "stratified", "masks"):
            means = []
            for step in range(args.batches):
                rows = torch.arange(b)
                x0 = corpus.batch_at(length, 0, step, rows)
                per = keyed_loss(
                    fn, model.graph, model.schedule, x0, seed=0, step=step, rows=rows, eps_t=1e-3,
                    objective=objective, t_sampling=ts, batch_size=b,
                )  # fmt: skip
                means.append(float(per.sum()) / (b * length))
            std[ts] = statistics.stdev(means)
            print(
                f"{objective}, t_sampling={ts}: batch-mean loss {statistics.mean(means):.4f} nats/token, "
                f"std over {args.batches} batches {std[ts]:.4f}"
            )
    for ts in ("stratified", "masks"):
        print(f"variance ratio uniform / {ts}: {(std['uniform'] / std[ts]) ** 2:.2f}")


if __name__ == "__main__":
    main()
