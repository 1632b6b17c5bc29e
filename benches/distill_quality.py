"""SDTT distillation of a masked teacher, measured: gen-PPL (judged by an AR model of the same data),
unigram entropy and real-word fraction of the teacher and the student at a few network-call counts, and
the wall-clock tokens/s of sampling. Writes a JSON and a Markdown table (docs/quality_results/distill/).

    nohup nice -n 19 python benches/distill_quality.py --teacher T --judge J --run-dir R --out DIR &

The distillation resumes when `--run-dir` already holds part of the run (exactly: keyed draws), so a run
cut short can be continued with the same command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ddm
import torch
from ddm.data import Corpus
from ddm.eval.metrics import gen_perplexity, real_word_fraction, unigram_entropy
from ddm.io import checkpoint, run
from ddm.io.rundata import cached_tokens
from ddm.training.distill import DistillConfig, distill


def _measure(model, steps, judge, vocabulary, *, num, seed):
    """Gen-PPL, entropy, real words and tokens/s of `num` analytic samples of `steps` calls."""
    t0 = time.perf_counter()
    x = ddm.sample(model, steps, batch_size=num, seed=seed)
    seconds = time.perf_counter() - t0
    texts = [model.tokenizer.decode(row) for row in x.tolist()]
    return {
        "gen_ppl": gen_perplexity(x, judge),
        "entropy": unigram_entropy(x),
        "real_words": real_word_fraction(texts, vocabulary),
        "tokens_per_s": x.numel() / seconds,
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--judge", required=True, help="an autoregressive checkpoint of the same data")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", default="docs/quality_results/distill")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps-per-round", type=int, default=100)
    p.add_argument("--teacher-steps", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--num", type=int, default=32, help="samples per figure")
    p.add_argument("--seeds", type=int, default=2, help="sample seeds per figure (the noise band)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = DistillConfig(
        run_dir=args.run_dir, rounds=args.rounds, steps_per_round=args.steps_per_round,
        teacher_steps=args.teacher_steps, batch_size=args.batch_size, lr=args.lr, save_every=50,
        log_every=10, progress=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    resume = checkpoint.latest(args.run_dir) is not None
    student_path = distill(args.teacher, cfg, resume=resume)
    distill_s = time.perf_counter() - t0
    teacher, student, judge = ddm.load(args.teacher), ddm.load(student_path), ddm.load(args.judge)
    cache = cached_tokens(run.run_dir_of(teacher.checkpoint_path))
    corpus = Corpus(cache.open(), teacher.tokenizer, 0.1)
    vocabulary = teacher.tokenizer.decode(corpus.train_tokens.tolist())
    n = cfg.student_steps()
    rows = []
    for name, model, steps in (
        ("teacher", teacher, args.teacher_steps),
        ("teacher", teacher, n),
        ("student", student, n),
        ("student", student, 2 * n),
    ):
        for seed in range(args.seeds):
            m = _measure(model, steps, judge, vocabulary, num=args.num, seed=seed)
            rows.append({"model": name, "calls": steps, "seed": seed, **m})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": cfg.to_dict(),
        "teacher": args.teacher,
        "judge": args.judge,
        "student": str(student_path),
        "distill_seconds_this_invocation": distill_s,
        "resumed": resume,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["loadavg"]))


if __name__ == "__main__":
    main()
