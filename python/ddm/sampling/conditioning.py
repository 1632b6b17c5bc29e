"""Conditioning by projection: positions fixed to given tokens for the whole reverse process.

docs/math.md section 5.

A prefix, a suffix and an infill pattern are merged into one `Fixed` (a mask of fixed positions and their
tokens), which the sampling loop writes into the sequence before every network call and step, and at the
end. For the absorbing graph this is exact; for the uniform graph it is an approximation (see
`ddm.sampling.sample`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Fixed", "build_fixed"]


@dataclass
class Fixed:
    """Fixed positions of a sequence of length `L`.

    Attributes:
        mask: bool `[L]`, True where the position is fixed.
        tokens: int64 `[L]`, the fixed token where `mask` is True (0 elsewhere); `[B, L]` for one prefix
            per row (`build_fixed` of a `[B, P]` prefix).
    """

    mask: torch.Tensor
    tokens: torch.Tensor

    def to(self, device: Any) -> Fixed:
        return Fixed(self.mask.to(device), self.tokens.to(device))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Write the fixed tokens into `x` (`[B, L]`), returning a new tensor."""
        return torch.where(self.mask, self.tokens, x)  # (B, L)

    @property
    def num_fixed(self) -> int:
        return int(self.mask.sum())


def _token_ids(value: Any, name: str, vocab_size: int) -> torch.Tensor:
    """A list or 1-D integer tensor of ids as int64 `[n]` on the CPU, checked against `[0, vocab_size)`."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise TypeError(f"{name} must hold integer token ids, got dtype {value.dtype}")
        if value.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {list(value.shape)}")
        ids = value.detach().to(device="cpu", dtype=torch.int64)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be a list of int token ids, found {v!r}")
        ids = torch.tensor(list(value), dtype=torch.int64)
    else:
        raise TypeError(
            f"{name} must be a list of token ids or a 1-D LongTensor, got {type(value).__name__} "
            "(encode text with the model's tokenizer first)"
        )
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size - 1}]")
    return ids


def _infill(infill: Any, seq_len: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse an infill pattern into `(mask [L] bool, tokens [L] int64)`."""
    if isinstance(infill, Mapping):
        mask = torch.zeros(seq_len, dtype=torch.bool)
        tokens = torch.zeros(seq_len, dtype=torch.int64)
        for pos, tok in infill.items():
            if isinstance(pos, bool) or not isinstance(pos, int):
                raise TypeError(f"infill positions must be ints, got {pos!r}")
            if not 0 <= pos < seq_len:
                raise ValueError(f"infill position {pos} is outside [0, {seq_len - 1}] for seq_len={seq_len}")
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise TypeError(f"infill token at position {pos} must be an int id, got {tok!r}")
            if not 0 <= tok < vocab_size:
                raise ValueError(
                    f"infill token {tok} at position {pos} is outside the vocabulary [0, {vocab_size - 1}]"
                )
            mask[pos] = True
            tokens[pos] = tok
        return mask, tokens
    if isinstance(infill, (tuple, list)) and len(infill) == 2:
        mask, tokens = infill
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("infill=(mask, tokens) needs mask as a BoolTensor of shape [seq_len]")
        if not isinstance(tokens, torch.Tensor) or tokens.dtype == torch.bool or tokens.is_floating_point():
            raise TypeError("infill=(mask, tokens) needs tokens as an integer tensor of shape [seq_len]")
        if tuple(mask.shape) != (seq_len,) or tuple(tokens.shape) != (seq_len,):
            raise ValueError(
                f"infill mask and tokens must both have shape [{seq_len}] (seq_len), "
                f"got {list(mask.shape)} and {list(tokens.shape)}"
            )
        mask = mask.detach().cpu()
        tokens = torch.where(mask, tokens.detach().cpu().to(torch.int64), 0)
        if mask.any():
            fixed = tokens[mask]
            lo, hi = int(fixed.min()), int(fixed.max())
            if lo < 0 or hi >= vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"infill holds token id {bad}, outside the vocabulary [0, {vocab_size - 1}]")
        return mask, tokens
    raise TypeError(
        "infill must be a dict {position: token} or a pair (mask: BoolTensor[seq_len], "
        f"tokens: LongTensor[seq_len]), got {type(infill).__name__}"
    )


def _row_prefixes(prefix: torch.Tensor, suffix: Any, infill: Any, seq_len: int, vocab_size: int) -> Fixed:
    """A `Fixed` of one prefix per row, `[B, P]` (prompts of one length): mask `[L]`, tokens `[B, L]`."""
    if suffix is not None or infill is not None:
        raise ValueError("a prefix per row ([B, P]) takes no suffix or infill")
    rows = [_token_ids(row, "prefix", vocab_size) for row in prefix]
    width = prefix.shape[1]
    if width > seq_len:
        raise ValueError(f"prefix has {width} tokens, longer than seq_len={seq_len}")
    mask = torch.zeros(seq_len, dtype=torch.bool)
    mask[:width] = True
    tokens = torch.zeros(len(rows), seq_len, dtype=torch.int64)
    tokens[:, :width] = torch.stack(rows) if rows else tokens[:, :width]
    return Fixed(mask, tokens)


def build_fixed(prefix: Any, suffix: Any, infill: Any, seq_len: int, vocab_size: int) -> Fixed | None:
    """Merge a prefix, a suffix and an infill pattern into one `Fixed`, or None when nothing is fixed.

    Args:
        prefix: token ids for positions `0..len(prefix)-1` (list or 1-D LongTensor), or None; a 2-D
            LongTensor `[B, P]` gives row b its own prefix (no suffix or infill then).
        suffix: token ids for the last `len(suffix)` positions, or None.
        infill: a dict `{position: token}` or a pair `(mask, tokens)` of `[seq_len]` tensors, or None.
        seq_len: the sequence length `L`.
        vocab_size: the number of real tokens (fixed tokens must lie in `[0, vocab_size)`; never MASK).

    Raises:
        ValueError: out-of-vocabulary ids, a prefix or suffix longer than `seq_len`, positions out of
            range, or two sources fixing one position to different tokens.
    """
    if prefix is None and suffix is None and infill is None:
        return None
    if isinstance(prefix, torch.Tensor) and prefix.dim() == 2:  # one prompt per row (ddm.sampling.response)
        return _row_prefixes(prefix, suffix, infill, seq_len, vocab_size)
    mask = torch.zeros(seq_len, dtype=torch.bool)
    tokens = torch.zeros(seq_len, dtype=torch.int64)

    def merge(m: torch.Tensor, t: torch.Tensor, name: str) -> None:
        clash = mask & m & (tokens != t)
        if clash.any():
            pos = int(clash.nonzero()[0])
            raise ValueError(
                f"{name} fixes position {pos} to {int(t[pos])}, but it is already fixed to {int(tokens[pos])}"
            )
        mask.logical_or_(m)
        tokens.copy_(torch.where(m, t, tokens))

    if prefix is not None:
        ids = _token_ids(prefix, "prefix", vocab_size)
        if ids.numel() > seq_len:
            raise ValueError(f"prefix has {ids.numel()} tokens, longer than seq_len={seq_len}")
        m = torch.zeros(seq_len, dtype=torch.bool)
        m[: ids.numel()] = True
        t = torch.zeros(seq_len, dtype=torch.int64)
        t[: ids.numel()] = ids
        merge(m, t, "prefix")
    if suffix is not None:
        ids = _token_ids(suffix, "suffix", vocab_size)
        if ids.numel() > seq_len:
            raise ValueError(f"suffix has {ids.numel()} tokens, longer than seq_len={seq_len}")
        m = torch.zeros(seq_len, dtype=torch.bool)
        t = torch.zeros(seq_len, dtype=torch.int64)
        if ids.numel():
            m[seq_len - ids.numel() :] = True
            t[seq_len - ids.numel() :] = ids
        merge(m, t, "suffix")
    if infill is not None:
        m, t = _infill(infill, seq_len, vocab_size)
        merge(m, t, "infill")
    return Fixed(mask, tokens)
