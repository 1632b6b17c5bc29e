"""Prompt / response pairs for fine-tuning: read, tokenised, padded with EOS, and their loss masks.

The recipe LLaDA, dLLM and NeMo share (LLaDA, arXiv 2502.09992, section 2.3; docs/math.md section 12):
- each pair is `prompt + response + EOS`, padded to `seq_len` with more EOS tokens;
- the prompt is never noised and never scored (`noised` False there): the loss is the bound of the
  response given the prompt, `ddm.eval.conditional_bound` with the prompt as the clean context;
- the EOS padding is noised like the response, so the model is never told where the answer ends (at
  sampling time it is not), and `supervise_padding` decides whether it is scored. The default is True,
  LLaDA's choice (sec 2.3: "we treat |EOS| as a normal token during training and remove it during
  sampling, enabling LLaDA to control the response length automatically"): a model scored on its padding
  learns that after the answer there is only EOS, so a sample's length is the model's own. With False
  only the response and its first EOS are scored (dLLM#81, apple/ml-diffucoder#9): the padding positions
  then carry no target, and what the model writes after its first EOS is cut off anyway.

`PairCorpus` has the surface of `ddm.data.Corpus` that the Trainer uses (`batch_at`, `val_blocks`,
`n_train`, `n_val`, `tokenizer`) plus `masks_at` / `val_masks`: row j of step s is the pair at the index
keyed by `(seed, s, j)`, as a block offset of a token stream is. The held-out pairs are the last
`val_fraction` of the file's lines (a contiguous tail, never trained on).

`keyed_length` is LLaDA's other length rule for pretraining (sec 2.2): a fraction (1%) of steps train on
sequences cut to a random length in `1..seq_len`, so that the model also sees short sequences.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddm import _rng
from ddm.data.corpus import keyed_offsets
from ddm.data.formats import EOS_CHAR
from ddm.errors import DataError, InvalidArgument
from ddm.tokenizers import CharTokenizer, Tokenizer, from_config, resolve

__all__ = [
    "STREAM_TRAIN_LENGTH",
    "PairCorpus",
    "PairTokens",
    "encode_pairs",
    "eos_id_of",
    "keyed_length",
    "load_pairs",
    "pair_masks",
    "pair_tokenizer",
    "read_jsonl_pairs",
]

STREAM_TRAIN_LENGTH = _rng.STREAMS["train_length"]  # the tag of `keyed_length`, from the one table
_U64 = (1 << 64) - 1


def read_jsonl_pairs(
    path: str | os.PathLike, prompt_field: str = "prompt", response_field: str = "response"
) -> list[tuple[str, str]]:
    """The `(prompt, response)` strings of a JSONL file, one object a line (blank lines skipped).
    `_read_jsonl` also gives each pair's line number.

    Raises:
        FileNotFoundError: no such file.
        DataError: a line that is not a JSON object, lacks a field, holds a non-string, or has an empty
            response; the message names the file, the line and the field.
    """
    return _read_jsonl(path, prompt_field, response_field)[0]


def _read_jsonl(path: str | os.PathLike, prompt_field: str, response_field: str):
    """`(pairs, line numbers)` of `read_jsonl_pairs`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist")
    pairs, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{str(path)!r} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where} is not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where} is not a JSON object with {prompt_field!r} and {response_field!r}")
            for name in (prompt_field, response_field):
                if name not in obj:
                    raise DataError(f"{where} has no field {name!r} (fields: {sorted(obj)})")
                if not isinstance(obj[name], str):
                    raise DataError(
                        f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}"
                    )
            if not obj[response_field]:
                raise DataError(
                    f"{where}: field {response_field!r} is empty (a pair needs a response to learn)"
                )
            pairs.append((obj[prompt_field], obj[response_field]))
            lines.append(n)
    if not pairs:
        raise DataError(f"pairs file {str(path)!r} holds no pairs")
    return pairs, lines


def eos_id_of(tokenizer: Tokenizer) -> int:
    """The id that ends a response and pads it: the tokenizer's `eos_id` (GPT-2's `eot_id`, byte 3 for
    bytes). Raises DataError for a tokenizer without one."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eot_id", None)
    if eos is None and tokenizer.to_config()["type"] == "bytes":
        eos = ord(EOS_CHAR)
    if eos is None:
        raise DataError(
            f"the tokenizer {tokenizer.to_config()['type']!r} has no end-of-sequence token, which pads a "
            "response and ends it: use a tokenizer with one (a 'char' vocabulary built from pairs has it)"
        )
    return int(eos)


@dataclass(frozen=True)
class PairTokens:
    """Tokenised pairs: `tokens` int64 `[M, L]` (prompt, response, EOS, EOS padding), `prompt_len` and
    `end` int64 `[M]` (`end` = the position after the first EOS, `prompt + response + 1`)."""

    tokens: torch.Tensor
    prompt_len: torch.Tensor
    end: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, idx: torch.Tensor | slice) -> PairTokens:
        """The pairs `idx`."""
        return PairTokens(self.tokens[idx], self.prompt_len[idx], self.end[idx])


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    source: str = "pairs",
    lines: Sequence[int] | None = None,
) -> PairTokens:
    """Tokenises `(prompt, response)` pairs into `prompt + response + EOS`, padded to `seq_len` with EOS.

    Raises:
        DataError: a prompt longer than `seq_len`, or a pair whose prompt, response and EOS do not fit,
            or an empty response, naming `source` and the pair's line (`lines[k]`; pair k without them).
    """
    eos = eos_id_of(tokenizer)
    tokens = np.full((len(pairs), seq_len), eos, dtype=np.int64)
    prompt_len = np.zeros(len(pairs), dtype=np.int64)
    end = np.zeros(len(pairs), dtype=np.int64)
    for k, (prompt, response) in enumerate(pairs):
        p, r = tokenizer.encode(prompt), tokenizer.encode(response)
        where = f"{source!r} line {lines[k]}" if lines is not None else f"{source}: pair {k + 1}"
        if not r:
            raise DataError(f"{where} has an empty response")
        if len(p) > seq_len:
            raise DataError(
                f"{where}: the prompt is {len(p)} tokens, longer than seq_len = {seq_len}: shorten it or "
                "raise seq_len"
            )
        if len(p) + len(r) + 1 > seq_len:
            raise DataError(
                f"{where}: prompt ({len(p)}) + response ({len(r)}) + EOS = {len(p) + len(r) + 1} tokens "
                f"do not fit in seq_len = {seq_len}: raise seq_len or drop the pair"
            )
        tokens[k, : len(p)] = p
        tokens[k, len(p) : len(p) + len(r)] = r
        prompt_len[k], end[k] = len(p), len(p) + len(r) + 1
    return PairTokens(torch.from_numpy(tokens), torch.from_numpy(prompt_len), torch.from_numpy(end))


def pair_masks(
    prompt_len: torch.Tensor, end: torch.Tensor, seq_len: int, supervise_padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(noised, scored)`, bool `[M, L]`: noised = every position after the prompt (response and EOS
    padding); scored = the noised ones, or (`supervise_padding` False) only those before `end` (the
    response and its first EOS)."""
    pos = torch.arange(seq_len)[None, :]  # (1, L)
    noised = pos >= prompt_len[:, None]
    scored = noised if supervise_padding else noised & (pos < end[:, None])
    return noised, scored


def keyed_length(seed: int, step: int, fraction: float, seq_len: int) -> int:
    """The length of step `step`'s sequences under LLaDA's random-length rule: `seq_len`, or with
    probability `fraction` a length uniform on `1..seq_len`; from two uniforms keyed by `(seed, step)`, so
    the whole global batch of a step has one length whatever the process split."""
    if fraction <= 0.0:
        return seq_len
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_LENGTH, step, torch.zeros(1, dtype=torch.int64), 2)[0]
    if float(u[0]) >= fraction:
        return seq_len
    return 1 + min(int(float(u[1]) * seq_len), seq_len - 1)


class PairCorpus:
    """Tokenised prompt / response pairs with a held-out tail, read like a `Corpus` by the Trainer.

    Args:
        pairs: the tokenised pairs, file order.
        tokenizer: their tokenizer.
        val_fraction: the fraction of pairs (the last ones) held out, in `[0, 1)`.
        supervise_padding: whether the EOS padding is scored (module docstring).
    """

    def __init__(
        self, pairs: PairTokens, tokenizer: Tokenizer, val_fraction: float, supervise_padding: bool = True
    ) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        self.pairs, self.tokenizer = pairs, tokenizer
        self.seq_len = pairs.tokens.shape[1]
        self.supervise_padding = supervise_padding
        self.n_val_pairs = int(round(len(pairs) * val_fraction))
        self.n_train_pairs = len(pairs) - self.n_val_pairs
        if self.n_train_pairs <= 0:
            raise DataError(f"{len(pairs)} pairs leave none to train on with val_fraction = {val_fraction}")
        self.n_train, self.n_val = self.n_train_pairs * self.seq_len, self.n_val_pairs * self.seq_len

    def check_seq_len(self, seq_len: int) -> None:
        """Raises InvalidArgument unless the pairs were padded to `seq_len`."""
        if seq_len != self.seq_len:
            raise InvalidArgument(f"the pairs are padded to seq_len = {self.seq_len}, not {seq_len}")

    def _train_rows(self, seed: int, step: int, rows: torch.Tensor) -> PairTokens:
        return self.pairs.rows(keyed_offsets(seed, step, rows, self.n_train_pairs))

    def batch_at(self, seq_len: int, seed: int, step: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` of step `step`: the training pairs at the indices keyed by `(seed, step, row)`."""
        self.check_seq_len(seq_len)
        return self._train_rows(seed, step, rows).tokens.clone()

    def masks_at(
        self, seq_len: int, seed: int, step: int, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(noised, scored)` masks of `batch_at`'s rows, bool `[b, L]`."""
        self.check_seq_len(seq_len)
        p = self._train_rows(seed, step, rows)
        return pair_masks(p.prompt_len, p.end, seq_len, self.supervise_padding)

    def _val(self, max_blocks: int | None) -> PairTokens:
        if self.n_val_pairs == 0:
            raise DataError("the pairs have no held-out tail (val_fraction = 0)")
        m = self.n_val_pairs if max_blocks is None else min(max_blocks, self.n_val_pairs)
        return self.pairs.rows(slice(self.n_train_pairs, self.n_train_pairs + m))

    def val_blocks(self, seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
        """The held-out pairs (at most `max_blocks`), `[M, L]`."""
        self.check_seq_len(seq_len)
        return self._val(max_blocks).tokens.clone()

    def val_masks(self, seq_len: int, max_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(noised, scored)` masks of `val_blocks`."""
        self.check_seq_len(seq_len)
        p = self._val(max_blocks)
        return pair_masks(p.prompt_len, p.end, seq_len, self.supervise_padding)

    def val_pairs(self) -> PairTokens:
        """All held-out pairs."""
        return self._val(None)


def pair_tokenizer(spec: str | dict[str, Any], texts: Iterable[str]) -> Tokenizer:
    """The tokenizer of a pairs corpus: a config dict (a checkpoint's, reused as is), `"char"` (the
    characters of the pairs plus `EOS_CHAR` as eos), or a name of `ddm.tokenizers.get`."""
    if isinstance(spec, dict):
        return from_config(spec)
    if spec == "char":
        chars = set()
        for text in texts:
            chars.update(text)
        if EOS_CHAR in chars:
            raise DataError(f"the pairs hold the end-of-sequence character {EOS_CHAR!r}, which pads them")
        return CharTokenizer(chars | {EOS_CHAR}, eos=EOS_CHAR)
    return resolve(spec)


def load_pairs(
    data: str | os.PathLike | Sequence[tuple[str, str]],
    *,
    seq_len: int,
    tokenizer: str | dict[str, Any] = "char",
    val_fraction: float = 0.1,
    supervise_padding: bool = True,
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> PairCorpus:
    """A `PairCorpus` from a JSONL file of pairs (or the pairs themselves).

    Args:
        data: the JSONL path, or `(prompt, response)` strings.
        seq_len: the padded length.
        tokenizer: as in `pair_tokenizer`; a checkpoint's config when fine-tuning it.
        val_fraction: the held-out fraction (the last pairs).
        supervise_padding: whether the EOS padding is scored.
        prompt_field, response_field: the JSONL fields.
    """
    if isinstance(data, (str, os.PathLike)):
        source = str(data)
        pairs, lines = _read_jsonl(data, prompt_field, response_field)
    else:
        source, pairs, lines = "pairs", list(data), None
    tok = pair_tokenizer(tokenizer, (t for pair in pairs for t in pair))
    encoded = encode_pairs(pairs, tok, seq_len, source=source, lines=lines)
    return PairCorpus(encoded, tok, val_fraction, supervise_padding)
