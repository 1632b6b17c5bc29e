"""Token files: a corpus tokenized once into a flat file of ids with a JSON sidecar, read by `np.memmap`.

The text is tokenized in chunks (`chunks` cuts it where no tokenizer of ddm would merge across the cut),
so a corpus larger than memory streams from disk. Files are written atomically (`ddm._fs`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddm import _fs
from ddm.assets import bundled_path
from ddm.tokenizers import CharTokenizer, Tokenizer, get

__all__ = ["BUNDLED", "TokenFile", "build_token_file", "chunks", "text_pieces", "write_tokens"]

BUNDLED = "hamlet"  # the name that selects the bundled text in configs
_CHUNK_CHARS = 1 << 22  # characters read at a time while tokenizing


def _resolve_source(data: str | os.PathLike | None) -> Path:
    if data is None or str(data) in ("", BUNDLED):
        return bundled_path()
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {str(path)!r} is empty")
    return path


_CUT = re.compile(r"(?<=\S)\s(?=\S)")  # a whitespace between two non-spaces


def chunks(pieces: Iterable[str], window: int = 4096) -> Iterator[str]:
    """Re-cuts a stream of text pieces so that every cut falls just before a whitespace between two
    non-spaces, where GPT-2's pre-tokenisation cuts as well: encoding the chunks one by one gives the
    tokens of the whole text, for every tokenizer of `ddm.tokenizers`.

    The cut is searched in the last `window` characters of each piece (plus what the previous cut left
    over); a piece with no such whitespace there is passed on whole.
    """
    carry = ""
    for piece in pieces:
        buf = carry + piece
        if not buf:
            continue
        cut = max((m.start() for m in _CUT.finditer(buf, max(0, len(buf) - window))), default=-1)
        if cut <= 0:
            carry = ""
            yield buf
        else:
            carry = buf[cut:]
            yield buf[:cut]
    if carry:
        yield carry


def _file_pieces(path: Path) -> Iterator[str]:
    """The text of a UTF-8 file, `_CHUNK_CHARS` characters at a time."""
    with open(path, encoding="utf-8") as f:
        while piece := f.read(_CHUNK_CHARS):
            yield piece


def text_pieces(text: str) -> Iterator[str]:
    """`text` in slices of `_CHUNK_CHARS` characters (to be cut by `chunks`)."""
    for start in range(0, len(text), _CHUNK_CHARS):
        yield text[start : start + _CHUNK_CHARS]


def _iter_chunks(path: Path) -> Iterator[str]:
    return chunks(_file_pieces(path))


@dataclass
class TokenFile:
    """A flat token file on disk with its JSON sidecar (`<path>.json`).

    Attributes:
        path: the token file.
        dtype: `"uint16"` or `"uint32"`.
        n_tokens: number of tokens.
        tokenizer: the tokenizer config the tokens were made with.
        source: provenance of the tokens (path, size, mtime of the text).
    """

    path: Path
    dtype: str
    n_tokens: int
    tokenizer: dict[str, Any]
    source: dict[str, Any]

    def open(self) -> np.ndarray:
        """The tokens as a read-only `np.memmap` of shape `[n_tokens]`."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))

    @classmethod
    def read(cls, path: str | os.PathLike) -> TokenFile:
        """Opens an existing token file through its sidecar."""
        path = Path(path)
        meta_path = Path(str(path) + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"token file {str(path)!r} or its sidecar {str(meta_path)!r} is missing")
        meta = json.loads(meta_path.read_text())
        tf = cls(path, meta["dtype"], int(meta["n_tokens"]), meta["tokenizer"], meta.get("source", {}))
        expected = tf.n_tokens * np.dtype(tf.dtype).itemsize
        if path.stat().st_size != expected:
            raise ValueError(f"token file {str(path)!r} has {path.stat().st_size} bytes, expected {expected}")
        return tf


def write_tokens(
    chunks: Iterable[str],
    tokenizer: Tokenizer,
    out_path: str | os.PathLike,
    source: dict[str, Any],
    dtype: str,
    *,
    empty_message: str | None = None,
) -> TokenFile:
    """Tokenizes text `chunks` into a flat token file at `out_path` and its `.json` sidecar.

    The tokens go to a temporary file that is fsynced and renamed into place, then the sidecar is written
    the same way, so a reader never sees a half-written file. The one writer behind `build_token_file`
    and `ddm.data.registry`.

    Args:
        chunks: the text, in pieces (each tokenized on its own).
        tokenizer: the tokenizer (`encode_array` is used when it has one).
        out_path: the token file.
        source: provenance recorded in the sidecar.
        dtype: the unsigned integer dtype of the file.
        empty_message: if given, a text that yields no token raises `ValueError(empty_message)`.

    Returns:
        The `TokenFile`.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    encode_array = getattr(tokenizer, "encode_array", None)
    n = 0
    with _fs.atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            ids = np.asarray(encode_array(chunk) if encode_array else tokenizer.encode(chunk)).astype(dtype)
            f.write(ids.tobytes())
            n += ids.size
        if n == 0 and empty_message is not None:
            raise ValueError(empty_message)
    tok_config = tokenizer.to_config()
    meta = {"dtype": dtype, "n_tokens": n, "tokenizer": tok_config, "source": source}
    _fs.write_text(Path(str(out_path) + ".json"), json.dumps(meta))
    return TokenFile(out_path, dtype, n, tok_config, source)


def _source_info(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_token_file(
    source: str | os.PathLike | None,
    out_path: str | os.PathLike,
    tokenizer: Tokenizer | str = "char",
) -> TokenFile:
    """Tokenizes a text file into a flat token file, streaming (the text is never fully in memory).

    If `out_path` already holds tokens of the same source (path, size, mtime) and tokenizer, it is
    reused. The file is written to a temporary name and renamed into place.

    Args:
        source: a UTF-8 text file, or None / `"hamlet"` for the bundled text.
        out_path: where the token file goes (its sidecar is `out_path + ".json"`).
        tokenizer: a tokenizer, `"char"` (built from the characters of the source) or a name of
            `ddm.tokenizers.get` (`"bytes"`, `"gpt2"`, `"dna"`, `"protein"`).

    Returns:
        The `TokenFile`.
    """
    src = _resolve_source(source)
    out_path = Path(out_path)
    info = _source_info(src)
    if isinstance(tokenizer, str):
        if tokenizer == "char":
            chars: set[str] = set()
            for chunk in _iter_chunks(src):
                chars.update(chunk)
            if not chars:
                raise ValueError(f"data file {str(src)!r} is empty")
            tok: Tokenizer = CharTokenizer(chars)
        else:
            tok = get(tokenizer)
    else:
        tok = tokenizer
    tok_config = tok.to_config()

    try:
        existing = TokenFile.read(out_path)
        if existing.source == info and existing.tokenizer == tok_config:
            return existing
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
        pass

    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    return write_tokens(
        _iter_chunks(src), tok, out_path, info, dtype, empty_message=f"data file {str(src)!r} is empty"
    )
