"""The options of `ddm sample` for the samplers of issue 14 (registered in `ddm.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

from ddm.sampling.sampler import PREDICTORS
from ddm.sampling.unmasking import UNMASKING_PREDICTORS

__all__ = ["ALL_PREDICTORS", "add_sampler_options", "sampler_kwargs"]

ALL_PREDICTORS = PREDICTORS + UNMASKING_PREDICTORS


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """Temperature / top-k / top-p, the confidence sampler's commit rule and order, and remasking."""
    g = p.add_argument_group("proposal and sampler options (ddm.sampling.sample)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="proposal temperature (1)")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens")
    g.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus of mass P in (0, 1]")
    g.add_argument("--group-by-step", action="store_true", help="first_hitting: one call per grid step")
    g.add_argument("--tokens-per-step", type=int, default=None, metavar="K", help="confidence: K per call")
    g.add_argument("--threshold", type=float, default=None, metavar="TAU", help="confidence: above TAU")
    g.add_argument("--order", choices=["confidence", "margin", "entropy", "random"], default="confidence")
    g.add_argument("--entropy-bound", type=float, default=None, metavar="G", help="confidence: EB bound")
    g.add_argument("--remask", type=float, default=None, metavar="ETA", help="ReMDM remasking in [0, 1]")
    g.add_argument("--remask-schedule", choices=["cap", "rescale"], default="cap")


def sampler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `ddm.sampling.sample` for the options above."""
    kw: dict[str, Any] = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.predictor == "first_hitting":
        kw["group_by_step"] = args.group_by_step
    if args.predictor == "confidence":
        kw.update(tokens_per_step=args.tokens_per_step, threshold=args.threshold, order=args.order,
                  entropy_bound=args.entropy_bound)  # fmt: skip
    if args.remask is not None:
        kw.update(remask=args.remask, remask_schedule=args.remask_schedule)
    return kw
