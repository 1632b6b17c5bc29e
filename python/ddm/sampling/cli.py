"""`ddm sample`: generate text from a checkpoint (registered in `ddm.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `ddm sample`."""
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint or run directory")
    p.add_argument("--steps", type=int, default=128, metavar="N", help="reverse steps (default 128)")
    p.add_argument("--num", type=int, default=1, metavar="K", help="number of samples (default 1)")
    p.add_argument("--prefix", metavar="TEXT", help="text the samples start with")
    p.add_argument("--suffix", metavar="TEXT", help="text the samples end with")
    p.add_argument("--seq-len", type=int, metavar="L", help="sample length in tokens (default: the model's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument(
        "--predictor", choices=["analytic", "euler", "first_hitting", "confidence"], default="analytic"
    )
    p.add_argument("--backend", choices=["auto", "rust", "torch"], default="auto")
    p.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="proposal temperature (default 1)"
    )
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus of mass P in (0, 1]")
    p.add_argument(
        "--tokens-per-step", type=int, default=None, metavar="K", help="confidence: commit K per call"
    )
    p.add_argument(
        "--threshold", type=float, default=None, metavar="TAU", help="confidence: commit above TAU"
    )
    p.add_argument("--order", choices=["confidence", "margin", "entropy", "random"], default="confidence")
    p.add_argument(
        "--entropy-bound", type=float, default=None, metavar="G", help="confidence: EB-sampler bound"
    )
    p.add_argument("--remask", type=float, default=None, metavar="ETA", help="ReMDM remasking, in [0, 1]")
    p.add_argument("--remask-schedule", choices=["cap", "rescale"], default="cap")
    p.add_argument("--device", default=None, help="device for the model (default: cpu)")
    p.add_argument("--out", metavar="FILE", help="write the samples to FILE (default: stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, encode prefix/suffix, sample, decode, print or write."""
    from ddm.checkpoint import load
    from ddm.sampling import sample

    model = load(args.checkpoint, device=args.device)
    tok = getattr(model, "tokenizer", None)
    if tok is None and (args.prefix or args.suffix):
        raise ValueError("this checkpoint has no tokenizer, so --prefix/--suffix text cannot be encoded")
    prefix = tok.encode(args.prefix) if args.prefix else None
    suffix = tok.encode(args.suffix) if args.suffix else None
    x, stats = sample(
        model,
        args.steps,
        batch_size=args.num,
        seq_len=args.seq_len,
        predictor=args.predictor,
        prefix=prefix,
        suffix=suffix,
        seed=args.seed,
        backend=args.backend,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        **(
            dict(
                tokens_per_step=args.tokens_per_step,
                threshold=args.threshold,
                order=args.order,
                entropy_bound=args.entropy_bound,
            )
            if args.predictor == "confidence"
            else {}
        ),
        remask=args.remask,
        remask_schedule=args.remask_schedule,
        progress=not args.no_progress,
        return_stats=True,
    )
    rows = x.tolist()
    texts = [tok.decode(r) if tok is not None else " ".join(map(str, r)) for r in rows]
    sep = "\n" + "=" * 80 + "\n"
    body = sep.join(texts) + "\n"
    if args.out:
        Path(args.out).write_text(body, encoding="utf-8")
        print(f"wrote {len(texts)} samples to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(body)
    print(
        f"{args.num} x {x.shape[1]} tokens, {args.steps} steps, {stats.network_calls} network calls, "
        f"{stats.backend} steps, seed {stats.seed}",
        file=sys.stderr,
    )
    return 0
