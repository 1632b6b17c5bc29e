"""A response to a prompt: `ddm.sample(model, steps, prompt=..., max_new_tokens=..., stop_at_eos=True)`.

Built on the prefix conditioning (`ddm.sampling.conditioning`): the prompt is the prefix of a sequence of
`len(prompt) + max_new_tokens` tokens (of `max_len` for a block model), the new tokens are sampled given
it (exactly, for the absorbing graph: the prompt is a clean observation, as in training on prompt /
response pairs, `ddm.data.pairs`), and only the new tokens are returned. With `stop_at_eos` each row is
cut at its first end-of-sequence token: the tokens after it are `eos_id` (a model fine-tuned with EOS
padding writes EOS there anyway) and `stats.lengths` gives each row's length, its EOS included.

`plan` turns the prompt into the prefix and the length; `cut_at_eos` is the cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddm.errors import InvalidArgument

__all__ = ["ResponsePlan", "cut_at_eos", "plan"]


@dataclass(frozen=True)
class ResponsePlan:
    """How a response is sampled: `prefix` (int64 `[P]`, the prompt's ids, or `[B, P]`, one prompt per
    row), `total` (the sequence length, `P + new`), `new` (the tokens to generate) and `eos_id` (None
    unless `stop_at_eos`)."""

    prefix: torch.Tensor
    total: int
    new: int
    eos_id: int | None


def _ids(prompt: Any, tokenizer: Any) -> torch.Tensor:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise InvalidArgument("prompt is text, but the model has no tokenizer: give token ids")
        return torch.tensor(tokenizer.encode(prompt), dtype=torch.int64)
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() != 1 or prompt.is_floating_point() or prompt.dtype == torch.bool:
            raise InvalidArgument(
                f"prompt must be 1-D integer token ids, got {prompt.dtype} {list(prompt.shape)}"
            )
        return prompt.detach().to("cpu", torch.int64)
    if isinstance(prompt, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in prompt
    ):
        return torch.tensor(list(prompt), dtype=torch.int64)
    raise InvalidArgument(
        f"prompt must be text, a list of token ids or a 1-D LongTensor, got {type(prompt).__name__}"
    )


def _prompts(prompt: Any, tokenizer: Any) -> torch.Tensor:
    """One prompt's ids `[P]`, or for a list of prompts (texts or id lists) of one token length `[B, P]`."""
    several = isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], int)
    if isinstance(prompt, torch.Tensor) and prompt.dim() == 2:
        several, prompt = True, list(prompt)
    if not several:
        return _ids(prompt, tokenizer)
    rows = [_ids(p, tokenizer) for p in prompt]
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise InvalidArgument(f"prompts answered together must have one token length, got lengths {lengths}")
    return torch.stack(rows)


def plan(
    model: Any, prompt: Any, max_new_tokens: int | None, stop_at_eos: bool, eos_id: int | None
) -> ResponsePlan:
    """The prefix and lengths of a response to `prompt` (text, encoded with `model.tokenizer`, or ids), or
    of one response per row to a list of prompts of one token length (a `[B, P]` prefix).

    `max_new_tokens` defaults to what the model's `seq_len` leaves after the prompt; a model without
    blocks cannot go past its `seq_len`, a block model can (its context slides).
    """
    ids = _prompts(prompt, getattr(model, "tokenizer", None))
    if ids.dim() == 2 and getattr(model, "block_size", 0):
        raise InvalidArgument("a block model answers one prompt at a time (a prefix for all rows)")
    ids_len = ids.shape[-1]
    seq_len = getattr(model, "seq_len", None)
    block = bool(getattr(model, "block_size", 0))
    if max_new_tokens is None:
        if seq_len is None:
            raise InvalidArgument("max_new_tokens is required: the model does not carry a seq_len")
        max_new_tokens = seq_len - len(ids)
        if max_new_tokens < 1:
            raise InvalidArgument(
                f"the prompt is {len(ids)} tokens: it leaves no room in seq_len = {seq_len}"
            )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgument(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    total = ids_len + max_new_tokens
    if not block and seq_len is not None and total > seq_len:
        raise InvalidArgument(
            f"prompt ({ids_len} tokens) + max_new_tokens ({max_new_tokens}) = {total} is longer than the "
            f"model's seq_len = {seq_len}: shorten the prompt or ask for fewer tokens"
        )
    if stop_at_eos and eos_id is None:
        eos_id = getattr(getattr(model, "tokenizer", None), "eos_id", None)
        if eos_id is None:
            raise InvalidArgument("stop_at_eos=True needs eos_id (the model's tokenizer has no eos_id)")
    return ResponsePlan(ids, total, max_new_tokens, eos_id if stop_at_eos else None)


def cut_at_eos(tokens: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(tokens with every position after a row's first eos_id set to eos_id, lengths [B])`: a row's
    length counts its tokens up to and including its first EOS (all of them without one)."""
    is_eos = tokens == eos_id  # (B, T)
    after = (torch.cumsum(is_eos.to(torch.int64), dim=1) - is_eos.to(torch.int64)) > 0  # past the first EOS
    out = torch.where(after, torch.full_like(tokens, eos_id), tokens)
    lengths = (~after).sum(dim=1)
    return out, lengths
