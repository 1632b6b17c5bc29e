"""Tokenizers: text <-> token ids, and the one registry of them.

Every tokenizer has `encode(str) -> list[int]`, `decode(list[int]) -> str`, `vocab_size`, `unit` and
`to_config()`. The kinds: `char` (the characters of a corpus, `ddm.tokenizers.char`, with its policy for
an unseen character: `"error"`, `"replace"` or `"skip"`), `bytes` (UTF-8 text; a data file is read as its
raw bytes), `gpt2` (the GPT-2 BPE, `ddm.tokenizers.gpt2`), `dna` and `protein` (`ddm.tokenizers.bio`).
`from_config(d)` rebuilds one from its config, `get(name)` returns a named one and `resolve(spec)` takes
either.
"""

from __future__ import annotations

from typing import Any

from ddm.assets import bundled_text
from ddm.tokenizers.bio import DNATokenizer, ProteinTokenizer
from ddm.tokenizers.char import ByteTokenizer, CharTokenizer, Tokenizer
from ddm.tokenizers.gpt2 import GPT2Tokenizer

__all__ = [
    "NAMES",
    "ByteTokenizer",
    "CharTokenizer",
    "DNATokenizer",
    "GPT2Tokenizer",
    "ProteinTokenizer",
    "Tokenizer",
    "from_config",
    "get",
    "resolve",
]

_KINDS: dict[str, Any] = {
    "bytes": ByteTokenizer,
    "gpt2": GPT2Tokenizer,
    "dna": DNATokenizer,
    "protein": ProteinTokenizer,
}


def from_config(d: dict[str, Any]) -> Tokenizer:
    """Rebuilds a tokenizer from its `to_config()` dict (`char`, `bytes`, `gpt2`, `dna`, `protein`)."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"tokenizer config must be a dict with a 'type', got {d!r}")
    kind = d["type"]
    params = {k: v for k, v in d.items() if k != "type"}
    if kind == "char":
        return CharTokenizer(d["chars"], eos=d.get("eos"), unknown=d.get("unknown", "error"))
    if kind in _KINDS:
        return _KINDS[kind](**params)
    raise ValueError(f"unknown tokenizer type {kind!r} (expected one of {list(NAMES)} or 'char')")


# Tokenizers that need no corpus to build, by name.
NAMES = ("bytes", "gpt2", "dna", "protein", "protein-x", "hamlet")


def get(name: str) -> Tokenizer:
    """A named tokenizer: `"bytes"` (UTF-8), `"gpt2"`, `"dna"`, `"protein"`, `"protein-x"` (the rare
    residues read as X), or `"hamlet"` (the characters of the bundled text)."""
    if name == "hamlet":
        return CharTokenizer.from_text(bundled_text())
    if name == "protein-x":
        return ProteinTokenizer(rare="x")
    if name in NAMES:
        return from_config({"type": name})
    raise ValueError(f"unknown tokenizer name {name!r} (expected one of {list(NAMES)})")


def resolve(spec: str | dict[str, Any]) -> Tokenizer:
    """A tokenizer from a name of `get` or a config dict of `from_config`."""
    return get(spec) if isinstance(spec, str) else from_config(spec)
