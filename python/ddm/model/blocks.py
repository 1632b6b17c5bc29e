"""Block diffusion (BD3-LM, Arriola et al., ICLR 2025, arXiv 2503.09573): the attention mask and the cache.

A block model with block size `B'` factorises a sequence into blocks of `B'` tokens,
`log p(x) = sum_b log p(x^b | x^{<b})` (BD3-LM's block likelihood), and models each conditional with an
absorbing diffusion over the block that sees the clean previous blocks (docs/math.md section 11).

*Training* (BD3-LM's vectorised training): the network reads the noisy sequence `x_t` and
the clean `x_0` side by side, `[x_t, x_0]` of length `2L`, both copies at the positions `0 .. L-1`, with
the mask of `block_mask`:

- a noisy token of block b attends to the noisy tokens of block b (block diagonal) and to the clean
  tokens of the blocks before b (offset block-causal);
- a clean token of block b attends to the clean tokens of the blocks up to b (block-causal);
- a clean token never attends to a noisy one.

So the outputs at the noisy copy are, for every block at once, the network's prediction of the block
given its own noisy state and the clean past: one call for all the BD3-LM terms.

*Sampling*: the keys and values of the clean blocks are computed once, when a block is finished
(`ScoreModel.commit_block`), and kept in a `KVCache`; each network call on the next block costs
`O(B' x context)`. Past the training length the context slides: a block attends to at most
`window - 1 = seq_len / B' - 1` previous blocks, as in training, and a clean block's keys were computed
with its own window at the time (the banded mask of `block_mask`, `window`), which is what recomputing
without the cache gives exactly (`ScoreModel.block_scores_recompute`, the test oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KVCache", "block_mask", "training_mask"]


def block_mask(
    q_pos: torch.Tensor,
    q_noisy: torch.Tensor,
    k_pos: torch.Tensor,
    k_noisy: torch.Tensor,
    block_size: int,
    window: int,
) -> torch.Tensor:
    """The block-diffusion attention mask, bool `[Lq, Lk]`: True where query i may attend to key j.

    Args:
        q_pos, k_pos: int64 `[Lq]`, `[Lk]` absolute positions (block = position // block_size).
        q_noisy, k_noisy: bool `[Lq]`, `[Lk]`: the token belongs to the noisy copy.
        block_size: `B'`.
        window: a query attends only to the blocks `b - window < b' <= b` (the training length in
            blocks; it never binds inside one training sequence).
    """
    qb = (q_pos // block_size)[:, None]  # (Lq, 1)
    kb = (k_pos // block_size)[None, :]  # (1, Lk)
    qn, kn = q_noisy[:, None], k_noisy[None, :]
    noisy_row = (kn & (kb == qb)) | (~kn & (kb < qb))  # own noisy block, clean past
    clean_row = ~kn & (kb <= qb)  # clean blocks up to its own
    return torch.where(qn, noisy_row, clean_row) & (qb - kb < window)


def training_mask(length: int, block_size: int, device: torch.device | None = None) -> torch.Tensor:
    """The mask of BD3-LM's vectorised training input `[x_t, x_0]`, bool `[2L, 2L]`."""
    pos = torch.arange(length, device=device).repeat(2)  # (2L,) both copies at 0 .. L-1
    noisy = torch.arange(2 * length, device=device) < length  # (2L,)
    window = -(-length // block_size) + 1  # never binds within the sequence
    return block_mask(pos, noisy, pos, noisy, block_size, window)


@dataclass
class KVCache:
    """Keys and values of the clean blocks a block model has committed, for every layer.

    Attributes:
        keys: per layer, `[B, heads, T, head_dim]`, already rotated at their positions.
        values: per layer, `[B, heads, T, head_dim]`.
        end: the absolute position of the next token (the number of tokens committed so far); the cache
            holds the positions `end - T .. end - 1` (at most `(window - 1) * block_size` of them).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    end: int

    @property
    def length(self) -> int:
        """Tokens held, `T`."""
        return int(self.keys[0].shape[2]) if self.keys else 0

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    def select(self, idx: torch.Tensor) -> KVCache:
        """The cache of the rows `idx` (int64 `[b]`), for a call on a subset of the batch."""
        return KVCache(
            [k.index_select(0, idx) for k in self.keys],
            [v.index_select(0, idx) for v in self.values],
            self.end,
        )

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(keys, values)` of one layer, or None when nothing is cached."""
        if self.length == 0:
            return None
        return self.keys[layer], self.values[layer]
