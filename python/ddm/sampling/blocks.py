"""Block-by-block sampling of a block-diffusion model (BD3-LM, arXiv 2503.09573; docs/math.md section 11).

`ddm.sample` dispatches here for a model with `block_size > 0`. Blocks of `B'` tokens are generated left
to right: block n starts all MASK and runs the grid sampler of `ddm.sampling.Sampler` (analytic, Euler,
with temperature / top-k / top-p and ReMDM remasking) or an unmasking sampler (first-hitting,
confidence; `ddm.sampling.unmasking`) on its `B'` positions, every network call scoring
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

import sys
from dataclasses import dataclass
from typing import Any

import torch

from ddm.sampling.conditioning import Fixed
from ddm.sampling.grid import run_grid
from ddm.sampling.unmasking import run_unmasking

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
    sampler: Any,
    *,
    batch_size: int,
    max_len: int,
    prefix: torch.Tensor | None,
    seed: int,
    device: torch.device,
    step_backend: str,
    kv_cache: bool = True,
    cache: bool = True,
    stop_at_eos: bool = False,
    eos_id: int | None = None,
    progress: bool = False,
    unmasking: tuple[str, int, dict[str, Any]] | None = None,
) -> BlockRun:
    """Generate `max_len` tokens block by block (see the module docstring).

    Args:
        model: a block `ScoreModel` (`block_size > 0`).
        sampler: a `Sampler` with its time grid set (`set_timesteps`).
        batch_size: `B`.
        max_len: tokens per row in all, prefix included.
        prefix: int64 `[P]` token ids on `device`, or None.
        seed: the seed.
        device: where the tokens live.
        step_backend: `"rust"` or `"torch"`, for `Sampler.step`.
        kv_cache: cache the keys and values of finished blocks (False: recompute the context every call).
        cache: reuse a row's output when its block did not change since the last call.
        stop_at_eos: stop a row at its first `eos_id` after the prefix.
        eos_id: the end-of-sequence id (needed with `stop_at_eos`).
        progress: a progress bar over the blocks.
        unmasking: `(predictor, steps, options)` to run an unmasking sampler (`"first_hitting"`,
            `"confidence"`; `ddm.sampling.unmasking`) in each block instead of the grid sampler.
    """
    bs = model.block_size
    n_blocks = -(-max_len // bs)
    P = 0 if prefix is None else int(prefix.numel())
    mask_id = sampler.graph.dim - 1
    out = torch.full((batch_size, n_blocks * bs), mask_id, dtype=torch.int64, device=device)
    if P:
        out[:, :P] = prefix
    kv = model.empty_cache(batch_size, device) if kv_cache else None
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    lengths = torch.full((batch_size,), max_len, dtype=torch.int64, device=device)
    counts = [0, 0]

    def scores(x: torch.Tensor, sigma: torch.Tensor, idx: torch.Tensor, lo: int) -> torch.Tensor:
        counts[0] += 1
        counts[1] += int(idx.numel())
        full = idx.numel() == batch_size
        if kv is not None:
            return model.block_scores(x, sigma, kv if full else kv.select(idx))
        context = out[:, :lo] if full else out[idx, :lo]
        return model.block_scores_recompute(context, x, sigma)

    bar = None
    if progress:
        from tqdm.auto import tqdm  # on demand: tqdm.auto probes for a notebook when imported

        bar = tqdm(total=n_blocks, desc="blocks", unit="block", file=sys.stderr, leave=False)
    n_done = 0
    try:
        with torch.no_grad():
            for n in range(n_blocks):
                lo, hi = n * bs, (n + 1) * bs
                if P < hi:  # a block to generate (a partial prefix is fixed inside it)
                    fixed = None
                    if P > lo:
                        m = torch.arange(bs, device=device) < P - lo
                        fixed = Fixed(m, torch.where(m, out[0, lo:hi], 0))
                    if unmasking is None:
                        out[:, lo:hi] = _denoise_block(
                            sampler, scores, lo, fixed, batch_size, bs, block_seed(seed, n), device,
                            step_backend, cache,
                        )  # fmt: skip
                    else:
                        predictor, steps, options = unmasking

                        def call(x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor, lo: int = lo):
                            return scores(x, sigma, rows, lo)

                        out[:, lo:hi] = run_unmasking(
                            predictor, call, sampler, batch_size, bs, fixed, seed=block_seed(seed, n),
                            steps=steps, use_rust=step_backend == "rust", device=device, options=options,
                        )[0]  # fmt: skip
                n_done = n + 1
                if bar is not None:
                    bar.update(1)
                if stop_at_eos and P < hi:
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
                if kv is not None:
                    kv = model.commit_block(kv, out[:, lo:hi])
                    counts[0] += 1
                    counts[1] += batch_size
    finally:
        if bar is not None:
            bar.close()
    T = int(lengths.max()) if stop_at_eos else max_len
    tokens = out[:, :T].clone()
    if stop_at_eos:
        after = torch.arange(T, device=device)[None, :] >= lengths[:, None]  # (B, T)
        tokens = torch.where(after, torch.full_like(tokens, eos_id), tokens)  # pad after EOS with EOS
    return BlockRun(tokens, lengths, counts[0], counts[1], n_done)


def _denoise_block(
    sampler: Any,
    scores: Any,
    lo: int,
    fixed: Fixed | None,
    batch_size: int,
    bs: int,
    seed: int,
    device: torch.device,
    step_backend: str,
    cache: bool,
) -> torch.Tensor:
    """One block from all MASK to clean with the grid sampler: the loop of `ddm.sample`
    (`ddm.sampling.grid.run_grid`) on `B'` positions."""
    x = sampler.init_noise(batch_size, bs, seed=seed, device=device)  # (B, B') all MASK

    def call(x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return scores(x, sigma, rows, lo)

    return run_grid(
        call, sampler, x, fixed, seed=seed, step_backend=step_backend, cache=cache, sigma_dtype=torch.float64
    )
