"""The absorbing-graph samplers that unmask positions rather than step on a grid (issue 14).

- `"first_hitting"`: `ddm.sampling.first_hitting` (exact, docs/math.md section 8).
- `"confidence"`: `ddm.sampling.confidence` (MaskGIT / LLaDA / Fast-dLLM / EB-sampler, section 9).

Remasking (`remask=`, ReMDM, section 10) is a grid step: `Sampler(remask=...)`, `ddm.sampling.remask`.

`ddm.sampling.sample` dispatches here; this module checks their options and counts network calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["UNMASKING_PREDICTORS", "check_unmasking", "run_unmasking"]

UNMASKING_PREDICTORS = ("first_hitting", "confidence")


def check_unmasking(predictor: str, graph: Any, **options: Any) -> None:
    """ValueError for an unmasking predictor on the uniform graph, or a bad option; for a grid predictor
    (analytic, euler), an option of the unmasking samplers is an error, not silently ignored."""
    if predictor not in UNMASKING_PREDICTORS:
        for name in ("tokens_per_step", "threshold", "entropy_bound"):
            if options.get(name) is not None:
                raise ValueError(f"{name} is an option of predictor='confidence', not {predictor!r}")
        if options.get("group_by_step", False):
            raise ValueError(f"group_by_step is an option of predictor='first_hitting', not {predictor!r}")
        if options.get("order", "confidence") != "confidence":
            raise ValueError(f"order is an option of predictor='confidence', not {predictor!r}")
        return
    what = "remask" if options.get("remask") is not None else f"predictor={predictor!r}"
    if not graph.absorbing:
        raise ValueError(f"{what} needs the absorbing graph: the uniform graph has no MASK to unmask")
    if options.get("remask") is not None:
        from ddm.sampling.remask import check_remask

        if predictor in UNMASKING_PREDICTORS:
            raise ValueError(
                f"remask is an option of the grid predictors (analytic, euler), not {predictor!r}"
            )
        check_remask(options["remask"], options.get("remask_schedule", "cap"))
    if not isinstance(options.get("group_by_step", False), bool):
        raise TypeError(f"group_by_step must be a bool, got {type(options['group_by_step']).__name__}")
    if predictor == "confidence":
        from ddm.sampling.confidence import check_confidence_options

        check_confidence_options(
            options["order"], options["tokens_per_step"], options["threshold"], options["entropy_bound"]
        )
    else:
        for name in ("tokens_per_step", "threshold", "entropy_bound"):
            if options.get(name) is not None:
                raise ValueError(f"{name} is an option of predictor='confidence', not {predictor!r}")


def run_unmasking(
    predictor: str,
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: Any,
    batch_size: int,
    seq_len: int,
    fixed: Any,
    *,
    seed: int,
    steps: int,
    use_rust: bool,
    device: torch.device,
    options: dict[str, Any],
    progress: bool = False,
) -> tuple[torch.Tensor, int, int]:
    """Run an unmasking sampler; returns `(x, network_calls, rows_evaluated)`.

    `call(x_rows, sigma_rows, rows)` scores the rows `rows` (int64 indices into the batch) of the batch;
    a block model's sampler (`ddm.sampling.blocks`) selects their cached keys and values with them. With
    `progress`, a tqdm bar on stderr counts the network calls (of a known total for first hitting).
    """
    graph = sampler.graph
    x = torch.full((batch_size, seq_len), graph.dim - 1, dtype=torch.int64, device=device)  # (B, L)
    free = torch.ones(seq_len, dtype=torch.bool)
    if fixed is not None:
        x = fixed.apply(x)
        free = x[0].cpu() == graph.dim - 1
    counts = [0, 0]
    bar = None
    if progress:
        from tqdm.auto import tqdm  # on demand: tqdm.auto probes for a notebook when imported

        total = None
        if predictor == "first_hitting":
            total = steps if options.get("group_by_step", False) else int(free.sum())
        bar = tqdm(total=total, desc=predictor, unit="call", file=sys.stderr, leave=False)

    def on_call(rows: int) -> None:
        counts[0] += 1
        counts[1] += rows
        if bar is not None:
            bar.update(1)

    try:
        x = _run(predictor, call, sampler, x, free, seed, steps, use_rust, options, on_call)
    finally:
        if bar is not None:
            bar.close()
    if fixed is not None:
        x = fixed.apply(x)
    return x, counts[0], counts[1]


def _run(
    predictor: str,
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: Any,
    x: torch.Tensor,
    free: torch.Tensor,
    seed: int,
    steps: int,
    use_rust: bool,
    options: dict[str, Any],
    on_call: Callable[[int], None],
) -> torch.Tensor:
    graph = sampler.graph
    with torch.no_grad():
        if predictor == "first_hitting":
            from ddm.sampling.first_hitting import first_hitting

            x = first_hitting(
                call, graph, sampler.schedule, x, free, seed=seed, steps=steps, eps=sampler.eps,
                group_by_step=options.get("group_by_step", False), proposal=sampler.proposal,
                use_rust=use_rust, on_call=on_call,
            )  # fmt: skip
        elif predictor == "confidence":
            from ddm.sampling.confidence import confidence_decode

            x = confidence_decode(
                call, graph, sampler.schedule, x, seed=seed, steps=steps, eps=sampler.eps,
                proposal=sampler.proposal, use_rust=use_rust, order=options["order"],
                tokens_per_step=options["tokens_per_step"], threshold=options["threshold"],
                entropy_bound=options["entropy_bound"], on_call=on_call,
            )  # fmt: skip
        else:  # pragma: no cover - guarded by UNMASKING_PREDICTORS
            raise ValueError(f"unknown unmasking predictor {predictor!r}")
    return x
