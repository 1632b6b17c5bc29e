"""The predictor options of `ddm sample`, read from the predictors' config dataclasses (registered in
`ddm.cli`): every field of every registered predictor's `Config` is one flag, listed once."""

from __future__ import annotations

import argparse
from typing import Any

from ddm.sampling import predictors
from ddm.sampling.ops import BACKENDS

__all__ = [
    "ALL_PREDICTORS",
    "add_guidance_options",
    "add_sampler_options",
    "guidance_kwargs",
    "sampler_kwargs",
]

ALL_PREDICTORS = predictors.names()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """`--predictor`, `--backend` and one flag per predictor option (its help from the field's metadata)."""
    p.add_argument(
        "--predictor", choices=ALL_PREDICTORS, default="analytic",
        help="the sampler: analytic or euler (tau-leaping on the grid), first_hitting (exact, one token per "
        "call), confidence (parallel decoding by score) or remdm (remasking); default analytic",
    )  # fmt: skip
    p.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="where the steps run: auto (the Rust core on the CPU, torch elsewhere), rust or torch",
    )  # fmt: skip
    g = p.add_argument_group(
        "predictor options (ddm.sampling.predictors; each applies to the predictors named)"
    )
    kinds = predictors.option_types()
    for name, (f, owners) in predictors.option_fields().items():
        kind = kinds[name]
        owners_note = "" if len(owners) == len(ALL_PREDICTORS) else f" [{', '.join(owners)}]"
        helptext = f.metadata.get("help", name) + owners_note
        if kind is bool:
            g.add_argument(_flag(name), action="store_true", help=helptext)
            continue
        # None: not given (the predictor's default applies), so an explicit value is always passed on
        kw: dict[str, Any] = dict(type=kind, default=None, help=f"{helptext} (default {f.default})")
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        g.add_argument(_flag(name), **kw)


def sampler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `ddm.sampling.sample` for the options the user gave (a flag left out
    keeps the predictor's default; an option of another predictor is passed on, so that `sample` names it
    in an error). `--remask` on a grid predictor selects ReMDM, as in `sample`."""
    kw: dict[str, Any] = {}
    for name in predictors.option_fields():
        value = getattr(args, name)
        if value is not None and value is not False:
            kw[name] = value
    return kw


def add_guidance_options(p: argparse.ArgumentParser) -> None:
    """`--label`, `--guidance` and `--guidance-rule` (`ddm.sampling.guidance`)."""
    g = p.add_argument_group("conditioning and guidance (ddm.sampling.guidance)")
    g.add_argument(
        "--label", metavar="NAME", help="the class of every sample (a model trained with --label-field)"
    )
    g.add_argument(
        "--guidance", type=float, metavar="G",
        help="classifier-free guidance strength >= 0 (1: conditional, 0: unconditional); without --label, "
        "with --prefix / --suffix: prompt guidance",
    )  # fmt: skip
    g.add_argument(
        "--guidance-rule", choices=("dcfg", "rates"),
        help="dcfg (absorbing default: mix the clean-token predictions) or rates (uniform default: mix "
        "the rates)",
    )  # fmt: skip


def guidance_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `label` / `guidance` / `guidance_rule` keywords of `ddm.sample` the user gave."""
    names = ("label", "guidance", "guidance_rule")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
