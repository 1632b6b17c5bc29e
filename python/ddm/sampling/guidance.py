"""Classifier-free guidance: one guided model seam for every sampler (docs/math.md section 14).

`Guided` wraps a score model into the `call(x, sigma, rows) -> log_score` that every sampling loop
already uses (the grid loop, the unmasking samplers), so every predictor is guided without a change of
its own. It runs the conditional and the unconditional pass as ONE network call on `2n` rows (the
conditional rows, then the unconditional ones) and returns the guided log-scores of the `n` rows:

- label guidance: the conditional pass has the row's label, the unconditional pass the null label;
- prompt guidance (no label, fixed positions; LLaDA / SMDM): the unconditional pass sees the fixed
  positions as MASK. No retraining: every absorbing model has it.

The rules (`rule`):

- `"dcfg"` (absorbing graph, its default; Schiff et al. 2024, arXiv 2412.10193): the clean-token
  predictions are mixed in log space and renormalised, `x_g ∝ x(.|y)^gamma x(.|null)^(1-gamma)`, and the
  score is formed from them with the schedule's hazard: `log s_g = log x_g - log expm1(sigma_bar)` at a
  MASK position (docs/math.md section 14.1). An absorbing log-score is `log x - log expm1(sigma_bar)` up
  to the model's normalisation, so `x ∝ exp(l)` over the N real tokens.
- `"rates"` (the uniform graph's default; Nisonoff et al. 2024, arXiv 2406.01572): the reverse rates are
  mixed, `R_g(x, y) = R(x, y | y)^gamma R(x, y | null)^(1-gamma)` off the diagonal. `R(x, y) = Q(x, y)
  s_y(x)`, so this is the log-score mix `l_g = gamma l_c + (1 - gamma) l_u` (the diagonal is reset by
  the step from the off-diagonal rates, as for any score). On the absorbing graph it also scales the
  unmasking hazard by `(sum_y s_y(.|y))^gamma (sum_y s_y(.|null))^(1-gamma)` normalisations.

Both shift by `log expm1(sigma_old) - log expm1(sigma_new)` off the current token when only the noise
level changes (`l_c` and `l_u` each do, and the mix has weights summing to 1), so the sampler's exact
cache applies to the guided output unchanged: a row whose tokens did not change reuses both passes.

`gamma = 1` is the conditional model and `gamma = 0` the unconditional one: there the formula needs one
pass only, and that one pass is what runs, so the result is the unguided sampler's bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddm.errors import InvalidArgument
from ddm.graphs import log_expm1

__all__ = ["RULES", "Guided", "GuidedBlocks", "build_guided", "guided_log_score", "resolve_labels"]

RULES = ("dcfg", "rates")


def _mix(l_c: torch.Tensor, l_u: torch.Tensor, gamma: float) -> torch.Tensor:
    """`gamma l_c + (1 - gamma) l_u` with `-inf` (probability 0) in either one kept `-inf` (for
    `0 < gamma`, `gamma != 1`: the guided law's support is the intersection of the two)."""
    mixed = gamma * l_c + (1.0 - gamma) * l_u
    zero = torch.isneginf(l_c) | torch.isneginf(l_u)
    return mixed.masked_fill(zero, -torch.inf)


def guided_log_score(
    graph: Any,
    x: torch.Tensor,
    l_c: torch.Tensor,
    l_u: torch.Tensor,
    sigma: torch.Tensor,
    gamma: float,
    rule: str,
) -> torch.Tensor:
    """The guided log-scores `[B, L, dim]` from the conditional `l_c` and unconditional `l_u` log-scores at
    the tokens `x` `[B, L]` and total noise `sigma` `[B]` (docs/math.md section 14; `rule` as above).

    `"dcfg"` (absorbing only): at a MASK position `log softmax(gamma l_c + (1 - gamma) l_u)` over the real
    tokens minus `log expm1(sigma)`, 0 at MASK; elsewhere `l_c` (a clean token never moves). A position
    where the two laws share no token keeps the conditional law. `"rates"`: the log-score mix, 0 at the
    current token.
    """
    if rule == "rates":
        return _mix(l_c, l_u, gamma).scatter(-1, x[..., None], 0.0)
    if rule != "dcfg":
        raise InvalidArgument(f"guidance_rule must be one of {RULES}, got {rule!r}")
    if graph.mask_id is None:
        raise InvalidArgument(
            "guidance_rule='dcfg' needs an absorbing graph; use 'rates' on the uniform graph"
        )
    n = graph.vocab_size
    m = _mix(l_c[..., :n], l_u[..., :n], gamma)  # (B, L, N)
    empty = torch.isneginf(m).all(dim=-1, keepdim=True)  # (B, L, 1): no common token
    m = torch.where(empty, l_c[..., :n], m)
    scale = log_expm1(sigma.to(l_c.dtype).reshape(-1))[:, None, None]  # (B, 1, 1)
    log_x = torch.log_softmax(m, dim=-1)  # (B, L, N): the guided clean-token law
    g = torch.cat([log_x - scale, torch.zeros_like(l_c[..., n:])], dim=-1)  # (B, L, dim), 0 at MASK
    return torch.where((x == graph.mask_id)[..., None], g, l_c)


@dataclass
class Guided:
    """The guided `call(x, sigma, rows) -> log_score` over a model (see the module docstring).

    Attributes:
        model: the score model, called as `model(x, sigma)` or, with labels, `model(x, sigma, label=ids)`.
        graph: its graph.
        labels: int64 `[B]`, each row's label id (the batch's rows), or None (prompt guidance, or no label).
        null: the null label id (labels only).
        gamma: the guidance strength >= 0, or None (no guidance: the conditional model alone).
        rule: `"dcfg"` or `"rates"`.
        fixed: bool `[L]`, the prompt positions masked in the unconditional pass (prompt guidance), or None.
    """

    model: Callable
    graph: Any
    labels: torch.Tensor | None
    null: int | None
    gamma: float | None
    rule: str
    fixed: torch.Tensor | None = None

    @property
    def passes(self) -> str:
        """The passes that run: `"c"` (conditional), `"u"` (unconditional) or `"cu"` (both, one call)."""
        if self.gamma is None or self.gamma == 1.0:
            return "c"
        return "u" if self.gamma == 0.0 else "cu"

    def row_labels(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """The labels `[n]` of the rows `rows` (all rows for None), or None (prompt guidance)."""
        if self.labels is None or rows is None:
            return self.labels
        return self.labels[rows.to(self.labels.device)]

    def uncond_x(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """`x` as the unconditional pass sees it: prompt guidance masks the fixed positions (`x` holds the
        positions `start ..` of the sequence)."""
        if self.fixed is None or self.labels is not None:
            return x
        fixed = self.fixed[start : start + x.shape[1]]
        if fixed.shape[0] < x.shape[1]:
            fixed = torch.cat([fixed, fixed.new_zeros(x.shape[1] - fixed.shape[0])])
        return x.masked_fill(fixed, self.graph.mask_id)  # (n, l): the prompt as MASK

    def inputs(
        self, x: torch.Tensor, labels: torch.Tensor | None, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows of the one network call (`passes` stacked) and their labels (None: no label)."""
        xs, ls = [], []
        for p in self.passes:
            xs.append(x if p == "c" else self.uncond_x(x, start))
            if labels is not None:
                ls.append(labels if p == "c" else torch.full_like(labels, self.null))
        return torch.cat(xs), (torch.cat(ls) if ls else None)

    def combine(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The guided log-scores of the `n` rows `x` from the stacked call output `out`."""
        if len(self.passes) == 1:
            return out
        n = x.shape[0]
        return guided_log_score(self.graph, x, out[:n], out[n:], sigma, float(self.gamma), self.rule)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        xs, labels = self.inputs(x, self.row_labels(rows))
        sig = torch.cat([sigma] * len(self.passes))
        out = self.model(xs, sig) if labels is None else self.model(xs, sig, label=labels)
        return self.combine(x, out, sigma)


@dataclass
class _PairCache:
    """A block model's key / value cache for the guided passes: `inner` holds `k n` rows (the rows of each
    pass in turn), `labels` the `n` rows' labels."""

    inner: Any
    labels: torch.Tensor | None
    n: int

    @property
    def end(self) -> int:
        return self.inner.end

    @property
    def batch_size(self) -> int:
        return self.n

    def select(self, idx: torch.Tensor) -> _PairCache:
        k = self.inner.batch_size // self.n
        both = torch.cat([idx + j * self.n for j in range(k)])
        labels = None if self.labels is None else self.labels[idx]
        return _PairCache(self.inner.select(both), labels, int(idx.numel()))


class GuidedBlocks:
    """A block model (`ddm.sampling.blocks`) with guidance: the block methods run the passes of `guided`
    as one call and the cache holds the keys and values of each pass."""

    takes_rows = True  # block_scores_recompute takes the rows (ddm.sampling.blocks._Blocks)

    def __init__(self, model: Any, guided: Guided) -> None:
        self.model, self.guided = model, guided
        self.block_size, self.seq_len = model.block_size, model.seq_len
        self.tokenizer = getattr(model, "tokenizer", None)

    def _call(self, fn: Any, labels: torch.Tensor | None, *args: Any, **kw: Any) -> Any:
        return fn(*args, **kw) if labels is None else fn(*args, label=labels, **kw)

    def empty_cache(self, batch_size: int, device: Any = None) -> _PairCache:
        k = len(self.guided.passes)
        return _PairCache(self.model.empty_cache(k * batch_size, device), self.guided.labels, batch_size)

    def block_scores(self, x: torch.Tensor, sigma: torch.Tensor, cache: _PairCache) -> torch.Tensor:
        xs, labels = self.guided.inputs(x, cache.labels, cache.end)
        sig = torch.cat([sigma] * len(self.guided.passes))
        out = self._call(self.model.block_scores, labels, xs, sig, cache.inner)
        return self.guided.combine(x, out, sigma)

    def commit_block(self, cache: _PairCache, x: torch.Tensor) -> _PairCache:
        xs, labels = self.guided.inputs(x, cache.labels, cache.end)
        return _PairCache(self._call(self.model.commit_block, labels, cache.inner, xs), cache.labels, cache.n)

    def block_scores_recompute(
        self, context: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        labels = self.guided.row_labels(rows)
        ctx, _ = self.guided.inputs(context, labels, 0)
        xs, both = self.guided.inputs(x, labels, context.shape[1])
        sig = torch.cat([sigma] * len(self.guided.passes))
        out = self._call(self.model.block_scores_recompute, both, ctx, xs, sig)
        return self.guided.combine(x, out, sigma)


def _label_id(value: Any, names: Sequence[str] | None, num_classes: int) -> int:
    if isinstance(value, str) and value.isdigit() and not (names and value in names):
        value = int(value)  # an id given as text (`ddm sample --label 2`)
    if isinstance(value, str):
        if not names:
            raise InvalidArgument(f"label={value!r} is a name, but the model has no label names; pass an id")
        if value not in names:
            raise InvalidArgument(f"unknown label {value!r}; the model's labels are {list(names)}")
        return list(names).index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise InvalidArgument(f"label must be a name or an id in [0, {num_classes}), got {value!r}")
    return value


def resolve_labels(model: Any, label: Any, batch_size: int) -> torch.Tensor:
    """The label ids `[batch_size]` of `label`: a name or id for every row, or one per row."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if not num_classes:
        raise InvalidArgument(
            "label given, but the model was trained without labels (model.num_classes = 0); train with "
            "--label-field, or use prompt guidance (guidance= with a prefix, suffix or infill)"
        )
    names = getattr(model, "label_names", None)
    if isinstance(label, torch.Tensor):
        label = label.tolist()
    if isinstance(label, (list, tuple)):
        if len(label) != batch_size:
            raise InvalidArgument(
                f"label must have batch_size={batch_size} entries (or be one), got {len(label)}"
            )
        ids = [_label_id(v, names, num_classes) for v in label]
    else:
        ids = [_label_id(label, names, num_classes)] * batch_size
    return torch.tensor(ids, dtype=torch.int64)


def _check_gamma(guidance: Any) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise InvalidArgument(f"guidance must be a finite number >= 0, got {guidance!r}")
    if guidance < 0:
        raise InvalidArgument(f"guidance must be >= 0 (0: unconditional, 1: conditional), got {guidance!r}")
    return float(guidance)


def build_guided(
    model: Any,
    graph: Any,
    batch_size: int,
    label: Any,
    guidance: Any,
    rule: str | None,
    fixed: Any,
    device: Any,
) -> Guided | None:
    """The `Guided` call of `ddm.sample`'s `label` / `guidance` / `guidance_rule`, or None (neither given).

    Raises InvalidArgument: a label on a model without labels, an unknown label name, `guidance < 0`,
    guidance with neither a label nor fixed positions (a prompt), prompt guidance on the uniform graph
    (no MASK), `dcfg` on the uniform graph, or a rule without guidance.
    """
    if label is None and guidance is None:
        if rule is not None:
            raise InvalidArgument("guidance_rule needs guidance=")
        return None
    gamma = None if guidance is None else _check_gamma(guidance)
    if rule is None:
        rule = "dcfg" if graph.mask_id is not None else "rates"
    if rule not in RULES:
        raise InvalidArgument(f"guidance_rule must be one of {RULES}, got {rule!r}")
    if rule == "dcfg" and graph.mask_id is None:
        raise InvalidArgument(
            "guidance_rule='dcfg' needs an absorbing graph; use 'rates' on the uniform graph"
        )
    labels = null = mask = None
    if label is not None:
        labels = resolve_labels(model, label, batch_size).to(device)
        null = int(model.num_classes)
    elif fixed is None or not fixed.num_fixed:
        raise InvalidArgument(
            "guidance needs a label (classifier-free guidance) or a prompt (prefix, suffix or infill: "
            "prompt guidance); got neither"
        )
    elif graph.mask_id is None:
        raise InvalidArgument("prompt guidance masks the prompt: it needs an absorbing graph")
    else:
        mask = fixed.mask.to(device)
    return Guided(model, graph, labels, null, gamma, rule, mask)
