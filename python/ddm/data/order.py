"""The order in which training windows are read: i.i.d. keyed offsets, or a fresh permutation per epoch.

Both orders are functions of `(seed, step, row)` alone, so a step's global batch does not depend on how
many processes or micro-batches compute it, and a run resumed at any step reads what the uninterrupted run
would have read (`ddm.training.distributed`, exact resume).

- `RandomOrder` (`data_order = "random"`): row j of step s starts at an offset keyed by `(seed, s, j)`,
  uniform over every offset of the training split (`Corpus.batch_at`). An epoch is a unit of count only:
  `n_train` tokens seen.
- `EpochOrder` (`data_order = "epochs"`): sample `g = s * batch_size + j` is read in epoch
  `e = g // W`, at place `i = g % W`. Epoch e cuts the training split into `W` non-overlapping windows
  starting at a phase `r_e`, and reads them in the order of a permutation `pi_e`, both keyed by
  `(seed, e)`: the offset is `r_e + pi_e(i) * seq_len`. Every window of an epoch is read once, the order
  and the cut points change from epoch to epoch, and a batch may straddle two epochs.

`W = floor((n_train + 1) / seq_len) - 1` windows, so that every phase `r_e` in `[0, seq_len)` fits (at most
`2 seq_len - 1` tokens of an epoch are left unread, at its two ends, and other epochs' phases read them); a
split shorter than `2 seq_len - 1` tokens has `W = floor(n_train / seq_len)` and the phases that fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddm import _rng
from ddm.data.corpus import Corpus
from ddm.errors import DataError, InvalidArgument

__all__ = [
    "ORDERS",
    "STREAM_TRAIN_EPOCH_ORDER",
    "STREAM_TRAIN_EPOCH_PHASE",
    "EpochOrder",
    "RandomOrder",
    "check_batch_fits",
    "epoch_permutation",
    "epoch_windows",
    "make_order",
]

# Stream tags of the epoch order, from the one table (ddm._rng.STREAMS).
STREAM_TRAIN_EPOCH_ORDER = _rng.STREAMS["train_epoch_order"]
STREAM_TRAIN_EPOCH_PHASE = _rng.STREAMS["train_epoch_phase"]
_U64 = (1 << 64) - 1
ORDERS = ("random", "epochs")


def epoch_windows(n_train: int, seq_len: int) -> tuple[int, int]:
    """`(W, P)`: the windows per epoch and how many phases `r_e in [0, P)` fit with `W` windows."""
    w = (n_train + 1) // seq_len - 1
    if w < 1:
        w = n_train // seq_len
    return w, min(seq_len, n_train - w * seq_len + 1)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation `pi_e` of `range(n)` of epoch `epoch`, `[n]` int64: the ranks of `n` uniforms keyed
    by `(seed, epoch, i)` (stable sort: ties, at 2^-53, break by index)."""
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_EPOCH_ORDER, epoch, torch.arange(n), 1)[:, 0]  # (n,)
    return torch.sort(u, stable=True).indices


def check_batch_fits(corpus: Corpus, seq_len: int, batch_size: int, windows: int) -> None:
    """Raises `DataError` when the training split holds fewer than `batch_size` windows of `seq_len` (one
    epoch would be less than one optimizer step), saying how small it is."""
    if windows < batch_size:
        need = (batch_size + 1) * seq_len - 1
        raise DataError(
            f"the training split has {corpus.n_train:,} tokens: {windows} windows of seq_len = {seq_len}, "
            f"fewer than one batch of batch_size = {batch_size}; an epoch needs at least {need:,} training "
            "tokens: use a larger corpus, a smaller batch_size or seq_len, or a lower val_fraction"
        )


class RandomOrder:
    """Every row at an offset keyed by `(seed, step, row)` (`Corpus.batch_at`); an epoch is `n_train /
    seq_len` windows' worth of samples."""

    name = "random"

    def __init__(self, corpus: Corpus, seq_len: int, seed: int, batch_size: int) -> None:
        self.corpus, self.seq_len, self.seed, self.batch_size = corpus, seq_len, seed, batch_size
        self.samples_per_epoch = corpus.n_train / seq_len

    def batch(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` of the global batch of step `step`, int64 `[b, seq_len]`."""
        return self.corpus.batch_at(self.seq_len, self.seed, step, rows)

    def epoch_at(self, step: int) -> float:
        """Epochs completed after `step` optimizer steps (fractional)."""
        return step * self.batch_size / self.samples_per_epoch

    def steps_for(self, epochs: float) -> int:
        """The optimizer steps of `epochs` epochs (rounded up)."""
        return max(1, math.ceil(round(epochs * self.samples_per_epoch / self.batch_size, 9)))

    def check_batch_fits(self) -> None:
        """`check_batch_fits` with the non-overlapping windows of the split."""
        check_batch_fits(self.corpus, self.seq_len, self.batch_size, self.corpus.n_train // self.seq_len)

    def describe(self) -> str:
        """The data position, for the checkpoint."""
        return "the step: offsets keyed by (seed, step, row)"


class EpochOrder(RandomOrder):
    """Each epoch a fresh permutation of `W` non-overlapping windows at a fresh phase, keyed by
    `(seed, epoch)`; sample `step * batch_size + row` is read at its place in its epoch (module doc)."""

    name = "epochs"

    def __init__(self, corpus: Corpus, seq_len: int, seed: int, batch_size: int) -> None:
        super().__init__(corpus, seq_len, seed, batch_size)
        corpus.check_seq_len(seq_len)
        self.windows, self.phases = epoch_windows(corpus.n_train, seq_len)
        self.samples_per_epoch = self.windows
        self._cache: dict[int, tuple[int, torch.Tensor]] = {}

    def check_batch_fits(self) -> None:
        check_batch_fits(self.corpus, self.seq_len, self.batch_size, self.windows)

    def epoch_plan(self, epoch: int) -> tuple[int, torch.Tensor]:
        """`(r_e, pi_e)` of epoch `epoch` (the two most recent are cached)."""
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            zero = torch.zeros(1, dtype=torch.int64)
            u = _rng.uniforms(self.seed & _U64, STREAM_TRAIN_EPOCH_PHASE, epoch, zero, 1)[0, 0]
            phase = min(int(u * self.phases), self.phases - 1)
            self._cache[epoch] = (phase, epoch_permutation(self.seed, epoch, self.windows))
        return self._cache[epoch]

    def offsets(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        """The window offsets of rows `rows` of step `step`, `[b]` int64."""
        g = step * self.batch_size + rows.cpu().to(torch.int64)  # (b,) global sample index
        epoch, place = g // self.windows, g % self.windows
        out = torch.empty_like(g)
        for e in torch.unique(epoch).tolist():
            phase, perm = self.epoch_plan(e)
            sel = epoch == e
            out[sel] = phase + perm[place[sel]] * self.seq_len
        return out

    def batch(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        idx = self.offsets(step, rows).numpy()[:, None] + np.arange(self.seq_len)[None]  # (b, L)
        return torch.from_numpy(np.asarray(self.corpus.tokens[idx], dtype=np.int64))

    def describe(self) -> str:
        return (
            f"the step: sample step * {self.batch_size} + row, epoch by epoch, {self.windows} windows per "
            "epoch permuted and phased by (seed, epoch)"
        )


def make_order(name: str, corpus: Corpus, seq_len: int, seed: int, batch_size: int) -> RandomOrder:
    """The data order `name` (`"random"` or `"epochs"`) of a run."""
    orders = {"random": RandomOrder, "epochs": EpochOrder}
    if name not in orders:
        raise InvalidArgument(f"data_order must be 'random' or 'epochs', got {name!r}")
    return orders[name](corpus, seq_len, seed, batch_size)
