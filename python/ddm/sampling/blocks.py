"""Block-by-block sampling of a block-diffusion model (BD3-LM, arXiv 2503.09573; docs/math.md section 11).

`ddm.sample` dispatches here for a model with `block_size > 0`. Blocks of `B'` tokens are generated left
to right: block n starts all MASK and runs the predictor (any of `ddm.sampling.predictors`, with its
options; a grid predictor through `ddm.sampling.grid`, an unmasking one through `ddm.sampling.unmasking`)
on its `B'` positions, every network call scoring
the block given the clean blocks before it. When the block is done its keys and values are computed once
and cached (`ScoreModel.commit_block`), so a call costs `O(B' x context)`; `kv_cache=False` recomputes the
whole context at every call instead (`ScoreModel.block_scores_recompute`), which gives the same
log-scores to float32 rounding and is the reference the tests compare with.

- Length: `max_len` tokens (the prefix included), any number: past the training `seq_len` the context
  slides (a block sees the last `seq_len / B' - 1` blocks, as in training).
- End of sequence: with `stop_at_eos`, a row is finished at the first `eos_id` it generates; the batch
  stops when every row is finished (or at `max_len`). The finished rows keep being computed with the
  others until then (their later tokens are discarded), so the draws of a row never depend on the others.
- Prefix: the first blocks. Whole prefix blocks are committed to the cache without sampling; a partial
  one is fixed inside its block by projection (exact for the absorbing graph, docs/math.md section 5.8).
- Randomness: block n's steps are keyed by `(seed_n, step, row, position)` with `seed_n` a function of
  `(seed, n)` alone, so sequence i depends only on `(seed, i)`, as in `ddm.sample`.
- Row reuse (`cache`): a block model is time-independent, so a row whose block did not change since the
  last call reuses that output, shifted to the new noise level (docs/math.md section 4.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddm.sampling.conditioning import Fixed
from ddm.sampling.grid import run_grid
from ddm.sampling.predictors import Grid, Predictor
from ddm.sampling.unmasking import progress_bar, run_unmasking

__all__ = ["BlockRun", "block_seed", "sample_blocks"]

_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # odd: n -> seed + n * _GOLDEN is injective mod 2^64


def block_seed(seed: int, n: int) -> int:
    """The seed of block n's steps (a Weyl sequence; the draws hash it with the step and the row)."""
    return (seed + (n + 1) * _GOLDEN) & _U64


@dataclass
class BlockRun:
    """What `sample_blocks` returns: tokens `[B, T]`, per-row lengths `[B]` (the first EOS included), and
    the network calls and rows evaluated (the block commits included)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    network_calls: int
    rows_evaluated: int
    blocks: int


def sample_blocks(
    model: Any,
    predictor: Predictor,
    grid: Grid,
    *,
    shape: tuple[int, int],
    prefix: torch.Tensor | None,
    seed: int,
    ops: Any,
    device: torch.device,
    cache: bool = True,
    kv_cache: bool = True,
    eos_id: int | None = None,
    progress: bool = False,
) -> BlockRun:
    """Generate `max_len` tokens block by block (see the module docstring).

    Args:
        model: a block `ScoreModel` (`block_size > 0`).
        predictor: any predictor; a grid one runs `grid` in each block, an unmasking one runs until the
            block has no MASK.
        grid: the time grid of each block.
        shape: `(B, max_len)`: rows, and tokens per row in all, prefix included.
        prefix: int64 `[P]` token ids on `device`, or None.
        seed: the seed.
        ops: the backend (`ddm.sampling.ops`).
        device: where the tokens live.
        cache: reuse a row's output when its block did not change since the last call.
        kv_cache: cache the keys and values of finished blocks (False: recompute the context every call).
        eos_id: stop each row at its first `eos_id` after the prefix (None: generate `max_len`).
        progress: a progress bar over the blocks.
    """
    batch_size, max_len = shape
    bs = model.block_size
    n_blocks = -(-max_len // bs)
    P = 0 if prefix is None else int(prefix.numel())
    out = torch.full((batch_size, n_blocks * bs), grid.graph.mask_id, dtype=torch.int64, device=device)
    if P:
        out[:, :P] = prefix
    state = _Blocks(model, out, model.empty_cache(batch_size, device) if kv_cache else None)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    lengths = torch.full((batch_size,), max_len, dtype=torch.int64, device=device)
    bar = progress_bar(n_blocks, "blocks", unit="block") if progress else None
    n_done = 0
    try:
        with torch.no_grad():
            for n in range(n_blocks):
                lo, hi = n * bs, (n + 1) * bs
                if P < hi:  # a block to generate (a partial prefix is fixed inside it)
                    out[:, lo:hi] = _block(state, predictor, grid, lo, hi, P, block_seed(seed, n), ops, cache)
                n_done = n + 1
                if bar is not None:
                    bar.update(1)
                if eos_id is not None and P < hi:
                    start = max(lo, P)
                    is_eos = out[:, start:hi] == eos_id  # (B, hi - start)
                    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + start + 1, -1)
                    new = ~done & (first > 0)
                    lengths = torch.where(new, first.clamp(max=max_len), lengths)
                    done |= new
                    if bool(done.all()):
                        break
                if hi >= max_len:
                    break
                state.commit(lo, hi)
    finally:
        if bar is not None:
            bar.close()
    T = int(lengths.max()) if eos_id is not None else max_len
    tokens = out[:, :T].clone()
    if eos_id is not None:
        after = torch.arange(T, device=device)[None, :] >= lengths[:, None]  # (B, T)
        tokens = torch.where(after, torch.full_like(tokens, eos_id), tokens)  # pad after EOS with EOS
    return BlockRun(tokens, lengths, state.calls, state.rows, n_done)


class _Blocks:
    """The sequence being generated, the KV cache of its finished blocks, and the call counts."""

    def __init__(self, model: Any, out: torch.Tensor, kv: Any) -> None:
        self.model, self.out, self.kv = model, out, kv
        self.calls = self.rows = 0

    def scores(self, x: torch.Tensor, sigma: torch.Tensor, idx: torch.Tensor, lo: int) -> torch.Tensor:
        """The block's log-scores for the rows `idx` given the clean blocks before `lo`."""
        self.calls += 1
        self.rows += int(idx.numel())
        full = idx.numel() == self.out.shape[0]
        if self.kv is not None:
            return self.model.block_scores(x, sigma, self.kv if full else self.kv.select(idx))
        context = self.out[:, :lo] if full else self.out[idx, :lo]
        if getattr(self.model, "takes_rows", False):  # a guided model: its labels are per row
            return self.model.block_scores_recompute(context, x, sigma, rows=idx)
        return self.model.block_scores_recompute(context, x, sigma)

    def commit(self, lo: int, hi: int) -> None:
        """Cache the keys and values of the finished block `[lo, hi)` (one call over the batch)."""
        if self.kv is not None:
            self.kv = self.model.commit_block(self.kv, self.out[:, lo:hi])
            self.calls += 1
            self.rows += self.out.shape[0]


def _block(
    state: _Blocks,
    predictor: Predictor,
    grid: Grid,
    lo: int,
    hi: int,
    P: int,
    seed: int,
    ops: Any,
    cache: bool,
) -> torch.Tensor:
    """One block from all MASK to clean with `predictor`: the loop of `ddm.sample` on `B'` positions, a
    partial prefix fixed inside it."""
    bs = hi - lo
    batch, device = state.out.shape[0], state.out.device
    fixed = None
    if P > lo:
        m = torch.arange(bs, device=device) < P - lo
        fixed = Fixed(m, torch.where(m, state.out[0, lo:hi], 0))

    def call(x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return state.scores(x, sigma, rows, lo)

    x = torch.full((batch, bs), grid.graph.mask_id, dtype=torch.int64, device=device)  # (B, B') all MASK
    if predictor.unmasking:
        x = x if fixed is None else fixed.apply(x)
        x = run_unmasking(predictor, grid, call, x, seed=seed, ops=ops)[0]
        return x if fixed is None else fixed.apply(x)
    return run_grid(
        call, predictor, grid, x, fixed, seed=seed, ops=ops, cache=cache, sigma_dtype=torch.float64
    )
