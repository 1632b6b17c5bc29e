"""The training objective: the keyed draws of a training step and the per-sequence loss they feed.

No randomness of a training step comes from a stateful generator. The times `t` and the corruption `x_t`
of sequence `j` of the global batch of step `s` are counter-based draws keyed by `(seed, stream, s, j)` (and
the position, for `x_t`), so a sequence gets the same noise whatever batch, process or micro-batch computes
it (`ddm.training.distributed` relies on this). The one draw not keyed per sequence is dropout: torch's
global RNG is reseeded per micro-batch from `(seed, step, first row)` (`dropout_seed`).

`Objective` holds the fields of the run config that shape the loss; `Objective.loss` (or `keyed_loss`)
computes it: the DWDSE (`"diffusion"`, SEDD eq. 10), the masked-diffusion NELBO (`"masked"`), or the block
loss (`"block"`, BD3-LM), each with uniform, stratified or (absorbing graph) masks-first times.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ddm import _rng
from ddm.errors import InvalidArgument
from ddm.losses import block_loss as block_loss_fn
from ddm.losses import dwdse, mask_count_times, mask_counts, masked_nelbo
from ddm.sampling.ops import RustOps, native_available
from ddm.schedules import Schedule

__all__ = [
    "OBJECTIVES",
    "STREAM_TRAIN_CORRUPT",
    "STREAM_TRAIN_DROPOUT",
    "STREAM_TRAIN_TIME",
    "STREAM_TRAIN_TIME_STRATA",
    "Objective",
    "dropout_seed",
    "keyed_block_times",
    "keyed_loss",
    "keyed_mask_draws",
    "loss_masks",
    "keyed_times",
]

# Stream tags of the training randomness, from the one table (ddm._rng.STREAMS).
STREAM_TRAIN_TIME = _rng.STREAMS["train_time"]
STREAM_TRAIN_CORRUPT = _rng.STREAMS["train_corrupt"]
STREAM_TRAIN_DROPOUT = _rng.STREAMS["train_dropout"]
STREAM_TRAIN_TIME_STRATA = _rng.STREAMS["train_time_strata"]
_U64 = (1 << 64) - 1

# The objectives whose loss `Objective.loss` computes (the autoregressive baseline has its own,
# `ddm.model.autoregressive.sequence_nll`).
OBJECTIVES = ("diffusion", "masked", "block")


def dropout_seed(seed: int, step: int, first_row: int) -> int:
    """A 53-bit seed for torch's global RNG (dropout) of the micro-batch starting at `first_row`."""
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_DROPOUT, step, torch.tensor([first_row]), 1)
    return int(u.item() * 9007199254740992.0)


def _uniform_times(seed: int, step: int, rows: torch.Tensor, per_row: int, t_sampling: str, batch_size: int):
    """Uniforms `[b, per_row]` in `[0, 1)`: keyed per `(row, k)`, or stratified over `batch_size * per_row`
    strata from one offset keyed by `(seed, step)`."""
    seed &= _U64
    if t_sampling == "uniform":
        return _rng.uniforms(seed, STREAM_TRAIN_TIME, step, rows, per_row)  # (b, per_row) float64
    if t_sampling == "stratified":
        if batch_size <= 0:
            raise InvalidArgument("stratified times need the global batch_size")
        zero = torch.zeros(1, dtype=torch.int64, device=rows.device)
        u0 = _rng.uniforms(seed, STREAM_TRAIN_TIME_STRATA, step, zero, 1)[0, 0]  # one offset per step
        if per_row == 1:
            return torch.frac(u0 + rows.to(torch.float64) / batch_size)[:, None]  # (b, 1)
        k = torch.arange(per_row, device=rows.device, dtype=torch.float64)
        return torch.frac(u0 + (rows.to(torch.float64)[:, None] * per_row + k) / (batch_size * per_row))
    raise InvalidArgument(f"t_sampling must be 'uniform' or 'stratified', got {t_sampling!r}")


def keyed_times(
    seed: int,
    step: int,
    rows: torch.Tensor,
    eps_t: float,
    *,
    t_sampling: str = "uniform",
    batch_size: int = 0,
) -> torch.Tensor:
    """The training times `t` of the rows `rows` of a step's global batch, `[b]` float64 in `[eps_t, 1]`.

    `"uniform"`: `t ~ U[eps_t, 1]` from the uniform keyed by `(seed, step, row)`. `"stratified"`: one
    offset `u0` keyed by `(seed, step)` and `t_j = eps_t + (1 - eps_t) frac(u0 + j / batch_size)` for
    global row `j`, so the batch holds one time in each of its `batch_size` strata (MDLM's low-discrepancy
    sampler, Sahoo et al. 2024); each `t_j` is still uniform, so the loss stays unbiased, and the rows of
    a process do not depend on how the batch is split.
    """
    u_t = _uniform_times(seed, step, rows, 1, t_sampling, batch_size)[:, 0]  # (b,)
    return eps_t + (1.0 - eps_t) * u_t


def keyed_block_times(
    seed: int,
    step: int,
    rows: torch.Tensor,
    eps_t: float,
    blocks: int,
    *,
    t_sampling: str = "uniform",
    batch_size: int = 0,
) -> torch.Tensor:
    """The times of the blocks of the rows `rows`, `[b, blocks]` float64: block k of row j is keyed by
    `(seed, step, j, k)`, and `"stratified"` spreads the `batch_size * blocks` times of a step over as many
    strata. Block 0 gets the time `keyed_times` gives the row (so one block is the ordinary objective)."""
    u_t = _uniform_times(seed, step, rows, blocks, t_sampling, batch_size)  # (b, blocks)
    return eps_t + (1.0 - eps_t) * u_t


def keyed_mask_draws(
    seed: int,
    step: int,
    rows: torch.Tensor,
    length: int,
    schedule: Any,
    *,
    batch_size: int,
    noised: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masks design's training draws for the rows `rows` of a step's global batch (`t_sampling =
    "masks"`, the absorbing graph; docs/math.md section 4.6): `(t [b], masked [b, L], weight [b])`, float64,
    bool, float64.

    Row j's masked count is `c ~ q` (`ddm.losses.mask_counts`) by inverse CDF at `frac(u0 + j /
    batch_size)`, one offset `u0` keyed by `(seed, step)`, so a step's batch spreads its counts over the
    strata of q whatever the process split. Its positions get the corruption uniforms keyed by `(seed,
    step, j)`; the c smallest are masked, and the c-th smallest is `m ~ Beta(c, L - c + 1)`, independent of
    which positions they are. `t = m^{-1}(m)` and the weight `pi / q` come from
    `ddm.losses.mask_count_times`: `weight * f(t, x_t)` is an unbiased estimate of the integral of the
    loss over `t in [0, 1]`, with no heavy tail (the `1 / t` of a rare mask at small t cancels).

    With `noised` (bool `[b, L]`, CPU: a prompt's positions False), row j has `n_j` maskable positions:
    `c ~ q` on `1..n_j` and the c smallest uniforms among the noised positions are masked.
    """
    if batch_size <= 0:
        raise InvalidArgument("t_sampling='masks' needs the global batch_size")
    if type(schedule).time_of is Schedule.time_of:
        raise InvalidArgument("t_sampling='masks' needs a schedule with time_of (LogLinear, Geometric)")
    seed &= _U64
    rows = rows.to(torch.int64)
    zero = torch.zeros(1, dtype=torch.int64, device=rows.device)
    u0 = _rng.uniforms(seed, STREAM_TRAIN_TIME_STRATA, step, zero, 1)[0, 0].cpu()
    v = torch.frac(u0 + rows.cpu().to(torch.float64) / batch_size)  # (b,)
    n = torch.tensor(length) if noised is None else noised.sum(-1)  # maskable positions: 0-d or (b,)
    count, s_n = mask_counts(v, n, length)  # (b,) in 1..n, S(n)
    u = _rng.uniforms(seed, STREAM_TRAIN_CORRUPT, step, rows, length).cpu()  # (b, L) float64
    if noised is not None:  # the context is never among the c smallest (uniforms are < 1)
        u = torch.where(noised, u, torch.full_like(u, 2.0))
    m = u.sort(dim=-1).values.gather(-1, (count - 1).clamp(min=0)[:, None])[:, 0]  # (b,) the c-th smallest
    masked = u <= m[:, None]  # (b, L): exactly c positions
    t, weight = mask_count_times(schedule, m, count, s_n)
    return t, masked, weight


@dataclass(frozen=True)
class Objective:
    """What a training step minimises: the fields of the run config that shape the loss.

    Attributes:
        kind: `"diffusion"` (DWDSE, SEDD eq. 10), `"masked"` (the masked-diffusion NELBO; the model
            function then gives `log p(x0 | x_t)`) or `"block"` (block diffusion, BD3-LM).
        eps_t: lower end of the time range, in `[0, 1)`.
        t_sampling: `"uniform"` or `"stratified"` (`keyed_times`), or `"masks"` (the absorbing graph:
            masked counts and times from `keyed_mask_draws`, each row's loss times its importance weight).
        batch_size: the global batch size (for stratified times and masks).
        block_size: kind `"block"`: `B'`, the tokens per block.
        block_loss: kind `"block"`: `"masked"` or `"diffusion"`, the loss of each block.
    """

    kind: str = "diffusion"
    eps_t: float = 1e-3
    t_sampling: str = "uniform"
    batch_size: int = 0
    block_size: int = 0
    block_loss: str = "masked"

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise InvalidArgument(f"objective must be one of {OBJECTIVES}, got {self.kind!r}")

    @classmethod
    def from_config(cls, config: Any) -> Objective:
        """The objective of a `TrainConfig` (whose `objective` is not `"autoregressive"`)."""
        return cls(
            kind=config.objective,
            eps_t=config.eps_t,
            t_sampling=config.t_sampling,
            batch_size=config.batch_size,
            block_size=config.block_size,
            block_loss=config.block_loss,
        )

    def loss(
        self,
        log_fn: Any,
        graph: Any,
        schedule: Any,
        x0: torch.Tensor,
        *,
        seed: int,
        step: int,
        rows: torch.Tensor,
        noised: torch.Tensor | None = None,
        scored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sequence loss `[b]` of the clean rows `x0` (int64 `[b, L]`, global rows `rows` of step `step`),
        with the noise keyed by `(seed, step, row)`.

        With a loss mask (`ddm.data.pairs`: a prompt and its response), only the `noised` positions are
        corrupted (the prompt stays clean in `x_t`), only the `scored` ones count, and the row's loss is
        normalised over its scored tokens: `L / n_scored` times the sum, so that the mean over rows
        divided by `L` (the Trainer's nats per token) is the per-token loss of LLaDA's SFT (arXiv
        2502.09992 sec 2.3, the sum over the answer divided by its length). Without masks (or with
        all-ones masks, bit for bit) it is the loss of a whole block.

        Args:
            log_fn: `f(x_t: int64 [b, L], sigma_bar: [b])`: `[b, L, dim]` log-scores, or `[b, L, N]`
                log-probabilities for the masked objective; for kind `"block"`, `f(x_t, sigma_bar [b, L],
                x0)` scores every block given the clean ones before it.
            graph: the forward graph (`Absorbing` or `Uniform`).
            schedule: the noise schedule.
            x0: int64 clean tokens `[b, L]`.
            seed: the run's seed.
            step: the optimizer step (the key's counter).
            rows: int64 `[b]` global row indices of the sequences in the step's batch.
            noised: optional bool `[b, L]`: the positions corrupted (default: `scored`); the others are
                the clean context.
            scored: optional bool `[b, L]`: the positions counted in the loss (default: `noised`); a
                position counts only if it is noised too.
        """
        rows = rows.to(device=x0.device, dtype=torch.int64)
        masks = loss_masks(x0, noised, scored)
        if self.kind == "block":
            per_seq = self._block(log_fn, graph, schedule, x0, seed, step, rows, masks)
        elif self.t_sampling == "masks":
            per_seq = self._masks_first(log_fn, graph, schedule, x0, seed, step, rows, masks)
        else:
            per_seq = self._per_sequence_time(log_fn, graph, schedule, x0, seed, step, rows, masks)
        if masks is None:
            return per_seq
        n = masks["counted"].sum(-1).clamp(min=1).to(per_seq.dtype)  # (b,) scored tokens per row
        return per_seq * (x0.shape[1] / n)

    def _loss_fn(self) -> Any:
        return {"diffusion": dwdse, "masked": masked_nelbo}[self.kind]

    def _block(self, log_fn, graph, schedule, x0, seed, step, rows, masks) -> torch.Tensor:
        length = x0.shape[1]
        nb = -(-length // self.block_size)
        t = keyed_block_times(
            seed, step, rows, self.eps_t, nb, t_sampling=self.t_sampling, batch_size=self.batch_size
        )
        u = _rng.uniforms(seed & _U64, STREAM_TRAIN_CORRUPT, step, rows, length)  # (b, L) float64
        return block_loss_fn(
            log_fn, graph, schedule, x0, self.block_size, loss=self.block_loss,
            t=t.to(torch.get_default_dtype()), eps_t=self.eps_t, u=u, **(masks or {}),
        )  # fmt: skip

    def _masks_first(self, log_fn, graph, schedule, x0, seed, step, rows, masks) -> torch.Tensor:
        mask_id = getattr(graph, "mask_id", None)
        if mask_id is None:
            raise InvalidArgument(f"t_sampling='masks' needs the absorbing graph, got {graph!r}")
        noised = None if masks is None else masks["scored"].cpu()
        t, masked, weight = keyed_mask_draws(
            seed, step, rows, x0.shape[1], schedule, batch_size=self.batch_size, noised=noised
        )
        x_t = torch.where(masked.to(x0.device), torch.full_like(x0, mask_id), x0)
        t = t.to(device=x0.device, dtype=torch.get_default_dtype())
        f = self._loss_fn()(
            log_fn, graph, schedule, x0, t=t, eps_t=self.eps_t, x_t=x_t, **(masks or {})
        )  # (b,) at (t, x_t)
        return weight.to(device=f.device, dtype=f.dtype) * f

    def _per_sequence_time(self, log_fn, graph, schedule, x0, seed, step, rows, masks) -> torch.Tensor:
        loss = self._loss_fn()
        t = keyed_times(seed, step, rows, self.eps_t, t_sampling=self.t_sampling, batch_size=self.batch_size)
        t = t.to(torch.get_default_dtype())  # (b,)
        first = int(rows[0]) if len(rows) else 0
        contiguous = bool(torch.equal(rows, torch.arange(first, first + len(rows), device=rows.device)))
        if x0.device.type == "cpu" and contiguous and len(rows) and native_available():
            # the Rust twin of the corruption below, bit-identical for the same key (tests/test_parity.py)
            sigma_bar = schedule.total_noise(t).detach().to(torch.float64).contiguous()  # (b,)
            x_t = RustOps().corrupt(
                graph, x0.contiguous(), sigma_bar, seed & _U64, step, first, stream=STREAM_TRAIN_CORRUPT
            )
            return loss(log_fn, graph, schedule, x0, t=t, eps_t=self.eps_t, x_t=x_t, **(masks or {}))
        u = _rng.uniforms(seed & _U64, STREAM_TRAIN_CORRUPT, step, rows, x0.shape[1])  # (b, L) float64
        return loss(log_fn, graph, schedule, x0, t=t, eps_t=self.eps_t, u=u, **(masks or {}))


def loss_masks(
    x0: torch.Tensor, noised: torch.Tensor | None, scored: torch.Tensor | None
) -> dict[str, torch.Tensor] | None:
    """The keywords of the losses (`scored`: noised, `counted`: counted) for the masks of `Objective.loss`,
    checked (bool, the shape of `x0`, at least one counted position per row), or None without masks."""
    if noised is None and scored is None:
        return None
    out = {}
    for name, m in (("noised", noised), ("scored", scored)):
        if m is not None and (
            not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != x0.shape
        ):
            raise InvalidArgument(f"{name} must be a bool tensor of shape {tuple(x0.shape)}")
        out[name] = None if m is None else m.to(x0.device)
    noised = out["noised"] if out["noised"] is not None else out["scored"]
    counted = noised if out["scored"] is None else noised & out["scored"]
    if not bool(counted.any(-1).all()):
        raise InvalidArgument("every row needs at least one position both noised and scored (a response)")
    return {"scored": noised, "counted": counted}


def keyed_loss(
    log_fn: Any,
    graph: Any,
    schedule: Any,
    x0: torch.Tensor,
    *,
    seed: int,
    step: int,
    rows: torch.Tensor,
    objective: str | Objective = "diffusion",
    noised: torch.Tensor | None = None,
    scored: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """Per-sequence training loss with keyed noise: `Objective(objective, **options).loss(...)`.

    Args:
        log_fn, graph, schedule, x0, seed, step, rows: as in `Objective.loss`.
        objective: an `Objective`, or its kind (`"diffusion"`, `"masked"` or `"block"`).
        noised, scored: the loss masks of `Objective.loss` (a prompt and its response), or None.
        **options: fields of `Objective` (`eps_t`, `t_sampling`, `batch_size`, `block_size`,
            `block_loss`), which replace those of an `Objective` given as `objective`.

    Returns:
        `[b]` loss per sequence.
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Objective)} - {"kind"})
    if unknown or "kind" in options:
        raise InvalidArgument(
            f"keyed_loss got unknown options {unknown or ['kind']}; the options are the fields of Objective: "
            f"{[f.name for f in dataclasses.fields(Objective) if f.name != 'kind']}"
        )
    if isinstance(objective, Objective):
        obj = dataclasses.replace(objective, **options) if options else objective
    else:
        obj = Objective(kind=objective, **options)
    return obj.loss(
        log_fn, graph, schedule, x0, seed=seed, step=step, rows=rows, noised=noised, scored=scored
    )
