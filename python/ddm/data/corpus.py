"""A corpus: a token stream split into a training head and an honest held-out tail, cut into blocks.

The held-out split is the contiguous tail of the token stream (the last `val_fraction`), never seen in
training. Training batches are blocks of `seq_len` tokens at random offsets: `Corpus.batch_at` keys the
offset of row j of step s by (seed, s, j), so the data position is the step alone and any process can
read its own rows of a step (`ddm.training.distributed`); `Corpus.batch` draws from a `torch.Generator`
instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ddm import _rng
from ddm.data.formats import utf8_error
from ddm.errors import DataError
from ddm.tokenizers import Tokenizer

__all__ = ["STREAM_TRAIN_DATA", "Corpus", "blocks", "keyed_offsets", "read_text"]

STREAM_TRAIN_DATA = _rng.STREAMS["train_data"]  # the keyed data offsets' tag, from the one table
_U64 = (1 << 64) - 1


def read_text(path: str | os.PathLike) -> str:
    """Reads a UTF-8 text file; raises DataError if it is empty or not UTF-8 (naming the byte offset),
    FileNotFoundError if missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise utf8_error(path) from None
    if not text:
        raise DataError(f"data file {str(path)!r} is empty")
    return text


def keyed_offsets(seed: int, step: int, rows: torch.Tensor, n_offsets: int) -> torch.Tensor:
    """Block offsets in `[0, n_offsets)` for global rows `rows` of step `step`, `[b]` int64 (CPU).

    Uniform up to 2^-53 relative bias: `floor(u * n)` of a 53-bit uniform keyed by `(seed, step, row)`.
    """
    if n_offsets <= 0:
        raise ValueError(f"n_offsets must be positive, got {n_offsets}")
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_DATA, step, rows.cpu(), 1)[:, 0]  # (b,)
    return (u * n_offsets).floor().to(torch.int64).clamp_(max=n_offsets - 1)


class Corpus:
    """A token stream split into a training head and a held-out tail.

    Args:
        tokens: 1-D token array (a `np.memmap` for large corpora).
        tokenizer: the tokenizer of the tokens.
        val_fraction: fraction of tokens (the contiguous tail) held out, in `[0, 1)`.
    """

    def __init__(self, tokens: np.ndarray, tokenizer: Tokenizer, val_fraction: float) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("the corpus has no tokens")
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.val_fraction = val_fraction
        self.n_val = int(round(tokens.size * val_fraction))
        self.n_train = tokens.size - self.n_val

    @property
    def train_tokens(self) -> np.ndarray:
        """`[n_train]` training tokens (the head)."""
        return self.tokens[: self.n_train]

    @property
    def val_tokens(self) -> np.ndarray:
        """`[n_val]` held-out tokens (the tail)."""
        return self.tokens[self.n_train :]

    def check_seq_len(self, seq_len: int) -> None:
        """Raises ValueError if the training split is shorter than one block."""
        if self.n_train < seq_len:
            raise ValueError(
                f"the training split has {self.n_train} tokens, fewer than seq_len={seq_len}; "
                "use a larger corpus or a shorter seq_len"
            )

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """Blocks of `seq_len` training tokens at random offsets.

        Returns:
            int64 `[batch_size, seq_len]`.
        """
        self.check_seq_len(seq_len)
        offsets = torch.randint(0, self.n_train - seq_len + 1, (batch_size,), generator=generator)  # (B,)
        idx = offsets.numpy()[:, None] + np.arange(seq_len)[None]  # (B, L)
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))

    def batch_at(self, seq_len: int, seed: int, step: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` of the global batch of optimizer step `step`: blocks at keyed random offsets.

        The offset of row `j` is a counter-based draw keyed by `(seed, step, j)`
        (`keyed_offsets`), so a process reads only the rows it trains on, and the global
        batch of a step is the same whatever the number of processes or micro-batches.

        Args:
            seq_len: tokens per block.
            seed: the run's seed.
            step: the optimizer step.
            rows: int64 `[b]` global row indices.

        Returns:
            int64 `[b, seq_len]`.
        """
        self.check_seq_len(seq_len)
        offsets = keyed_offsets(seed, step, rows, self.n_train - seq_len + 1)  # (b,)
        idx = offsets.numpy()[:, None] + np.arange(seq_len)[None]  # (b, L)
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))

    def val_blocks(self, seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
        """Consecutive non-overlapping blocks of the held-out tail (a last partial block is dropped).

        Returns:
            int64 `[M, seq_len]`.
        """
        return blocks(self.val_tokens, seq_len, max_blocks, what="the held-out split")


def blocks(
    tokens: np.ndarray | torch.Tensor, seq_len: int, max_blocks: int | None = None, what: str = "data"
):
    """Cuts a 1-D token stream into `[M, seq_len]` int64 blocks (a last partial block is dropped)."""
    m = len(tokens) // seq_len
    if max_blocks is not None:
        m = min(m, max_blocks)
    if m == 0:
        raise ValueError(f"{what} has {len(tokens)} tokens, fewer than one block of seq_len={seq_len}")
    arr = (
        np.asarray(tokens[: m * seq_len], dtype=np.int64)
        if not torch.is_tensor(tokens)
        else tokens[: m * seq_len]
    )
    return torch.as_tensor(arr, dtype=torch.long).reshape(m, seq_len)
