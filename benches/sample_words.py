"""Do a text model's samples show real words? Samplers side by side on one checkpoint (issue 18).

For each sampler spec (`ddm report`'s syntax: `name[:key=value...]`, with `steps=K` here too) draws
`--samples` rows with the same seed, and prints one JSON line: the real-word fraction
(`ddm.eval.metrics.real_word_fraction`: the words of the samples that are words of the training text, the
words cut by a sample's ends not counted), the unigram entropy per sample in nats (a sampler that collapses
onto frequent words scores a high real-word fraction and a low entropy), the network calls, and seconds.
The first line is the reference: held-out windows of the same length, scored the same way.

Usage:
    python benches/sample_words.py --checkpoint runs/demo analytic:steps=128 analytic:steps=128:top_p=0.9 \
        first_hitting confidence:steps=128 [--samples 64] [--out words.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from ddm.data import load_corpus
from ddm.eval.metrics import real_word_fraction, unigram_entropy
from ddm.eval.report import parse_predictor
from ddm.io import checkpoint
from ddm.sampling import sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a checkpoint or run directory of a text model")
    ap.add_argument("specs", nargs="+", help="samplers: name[:steps=K][:key=value...]")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="append the JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = checkpoint.resolve(args.checkpoint)
    cfg = checkpoint.read_config(path)
    model = checkpoint.load(path)
    tok, L = model.tokenizer, model.seq_len
    with tempfile.TemporaryDirectory() as tmp:  # the corpus's tokens are memory-mapped: read them in here
        train = cfg["train"]
        corpus = load_corpus(
            train["data"], Path(tmp), tokenizer=cfg["tokenizer"], val_fraction=train["val_fraction"]
        )
        vocabulary = tok.decode(corpus.train_tokens.tolist())
        val = corpus.val_blocks(L)[: args.samples].clone()
    held = [tok.decode(r) for r in val.tolist()]

    def emit(line: dict) -> None:
        line.update(checkpoint=str(path), seed=args.seed, load=[round(v, 2) for v in os.getloadavg()])
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")

    emit(
        dict(
            sampler="held-out text", real_words=real_word_fraction(held, vocabulary),
            entropy=unigram_entropy(val), rows=len(held), seq_len=L,
        )
    )  # fmt: skip
    for spec in args.specs:
        parts = spec.split(":")
        steps = next((int(p[6:]) for p in parts if p.startswith("steps=")), L)
        name, options = parse_predictor(":".join(p for p in parts if not p.startswith("steps=")))
        kw = dict(predictor=name, batch_size=args.samples, seed=args.seed, return_stats=True)
        t0 = time.perf_counter()
        x, stats = sample(model, steps, **kw, **options)
        seconds = time.perf_counter() - t0
        texts = [tok.decode(r) for r in x.tolist()]
        emit(
            dict(
                sampler=spec, real_words=real_word_fraction(texts, vocabulary), entropy=unigram_entropy(x),
                calls=stats.network_calls, seconds=round(seconds, 2), rows=len(texts), seq_len=L,
                example=texts[0],
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
