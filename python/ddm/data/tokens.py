"""Token files: a corpus tokenized once into a flat file of ids with a JSON sidecar, read by `np.memmap`.

The text is tokenized in chunks (`chunks` cuts it where no tokenizer of ddm would merge across the cut),
so a corpus larger than memory streams from disk. The files are read as the formats of
`ddm.data.formats` (plain text, FASTA, JSONL; a file, a directory or a glob), with an end-of-document
token between documents. Files are written atomically (`ddm._fs`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddm import _fs
from ddm.assets import bundled_path
from ddm.data.formats import BREAK, EOS_CHAR, file_format, pieces, resolve_files
from ddm.errors import DataError
from ddm.tokenizers import CharTokenizer, DNATokenizer, Tokenizer, get

__all__ = ["BUNDLED", "TokenFile", "build_token_file", "chunks", "encode_file", "text_pieces", "write_tokens"]

BUNDLED = "hamlet"  # the name that selects the bundled text in configs
_CHUNK_CHARS = 1 << 22  # characters read at a time while tokenizing


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


def text_pieces(text: str) -> Iterator[str]:
    """`text` in slices of `_CHUNK_CHARS` characters (to be cut by `chunks`)."""
    for start in range(0, len(text), _CHUNK_CHARS):
        yield text[start : start + _CHUNK_CHARS]


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


def _ids(tokenizer: Tokenizer, chunk: str | np.ndarray) -> np.ndarray:
    """The ids of a piece: text encoded (`encode_array` where the tokenizer has one), ids as they are."""
    if isinstance(chunk, np.ndarray):  # ids already (raw bytes, an end-of-document token)
        return chunk
    encode_array = getattr(tokenizer, "encode_array", None)
    return np.asarray(encode_array(chunk) if encode_array else tokenizer.encode(chunk))


def write_tokens(
    chunks: Iterable[str | np.ndarray],
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
        chunks: the text, in pieces (each tokenized on its own), or arrays of token ids (written as they are).
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
    n = 0
    with _fs.atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            ids = _ids(tokenizer, chunk).astype(dtype)
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


def _provenance(
    files: list[Path], formats: list[str], text_field: str, separator: str | None
) -> dict[str, Any]:
    """What the tokens were made from. One plain text file read as always gives the dict it always gave
    (so an existing token file of it is reused)."""
    read: dict[str, Any] = {}
    if formats != ["text"] or separator is not None:
        read = {"formats": sorted(set(formats)), "separator": separator}
        if "jsonl" in formats:
            read["text_field"] = text_field
    if len(files) == 1:
        return {**_source_info(files[0]), **read}
    return {"files": [_source_info(p) for p in files], **read}


def _char_tokenizer(stream: Callable[[], Iterator], separator: str | None, unknown: str) -> CharTokenizer:
    """The characters of the corpus (a pass over it), with `EOS_CHAR` as eos if it has several documents."""
    chars: set[str] = set()
    several = False
    for piece in stream():
        if piece is BREAK:
            several = True
        else:
            chars.update(piece)
    if not chars:
        raise DataError("the data holds no text")
    eos = None
    if several and separator is None:
        if EOS_CHAR in chars:
            raise DataError(
                f"the data holds the end-of-document character {EOS_CHAR!r}, which goes between its "
                "documents: give another separator (separator=...)"
            )
        chars.add(EOS_CHAR)
        eos = EOS_CHAR
    elif several:
        chars.update(separator)
    return CharTokenizer(chars, eos=eos, unknown=unknown)


def _separator_ids(tok: Tokenizer, separator: str | None) -> np.ndarray | None:
    """The ids put between two documents: `separator` encoded, or the tokenizer's end-of-document token
    (`eos_id`; GPT-2's `eot_id`; byte 3, `EOS_CHAR`, for bytes); None if it has none."""
    if separator is not None:
        return np.asarray(tok.encode(separator), dtype=np.int64)
    eos = getattr(tok, "eos_id", None)
    if eos is None:
        eos = getattr(tok, "eot_id", None)
    if eos is None and tok.to_config()["type"] == "bytes":
        eos = ord(EOS_CHAR)
    return None if eos is None else np.array([eos], dtype=np.int64)


def _token_stream(events: Iterator, sep: np.ndarray | None, what: str) -> Iterator[str | np.ndarray]:
    """The pieces of `ddm.data.formats.pieces` ready for `write_tokens`: the text of each document
    re-cut by `chunks`, raw bytes as they are, and `sep` between documents."""
    events = iter(events)
    at_break = False

    def text_of_document(first: str) -> Iterator[str]:
        nonlocal at_break
        yield first
        for e in events:
            if e is BREAK:
                at_break = True
                return
            yield e

    for e in events:
        if e is not BREAK:
            if isinstance(e, np.ndarray):  # raw bytes
                yield e
                continue
            yield from chunks(text_of_document(e))
            if not at_break:
                continue
            at_break = False
        if sep is None:
            raise DataError(
                f"{what} holds several documents and the tokenizer has no end-of-document token to "
                "put between them: give a separator (separator=...)"
            )
        yield sep


def build_token_file(
    source: str | os.PathLike | None,
    out_path: str | os.PathLike,
    tokenizer: Tokenizer | str = "char",
    *,
    text_field: str = "text",
    separator: str | None = None,
    unknown: str = "error",
) -> TokenFile:
    """Tokenizes a corpus into a flat token file, streaming (the text is never fully in memory).

    The files are read as `ddm.data.formats` says (plain text, FASTA, JSONL; a file, a directory or a
    glob). Between two documents (FASTA records, JSONL lines, files) goes `separator`, or by default the
    tokenizer's end-of-document token: `"char"` then adds `EOS_CHAR` to the vocabulary as its eos, and
    `"dna"` becomes `DNATokenizer(separator=True)`. One document gives the tokens of its text alone.

    If `out_path` already holds tokens of the same source (paths, sizes, mtimes, how they were read) and
    tokenizer, it is reused. The file is written to a temporary name and renamed into place.

    Args:
        source: a text, FASTA or JSONL file (`.gz` too), a directory or a glob of them, or None /
            `"hamlet"` for the bundled text.
        out_path: where the token file goes (its sidecar is `out_path + ".json"`).
        tokenizer: a tokenizer, `"char"` (built from the characters of the source) or a name of
            `ddm.tokenizers.get` (`"bytes"`: the raw bytes of plain text, `"gpt2"`, `"dna"`, `"protein"`).
        text_field: the field of a JSONL object that holds its text.
        separator: text put between documents instead of the end-of-document token.
        unknown: `"char"` only: the tokenizer's policy for a character it has not seen
            (`ddm.tokenizers.CharTokenizer`).

    Returns:
        The `TokenFile`.

    Raises:
        DataError: a file that is empty, not UTF-8 (the message names the byte offset), or not the format
            of its suffix.
    """
    bundled = source is None or str(source) in ("", BUNDLED)
    files = [bundled_path()] if bundled else resolve_files(source)
    out_path = Path(out_path)
    tok: Tokenizer | None = None
    if not isinstance(tokenizer, str):
        tok = tokenizer
    elif tokenizer != "char":
        tok = get(tokenizer)
    kind = "char" if tok is None else tok.to_config()["type"]
    formats = [file_format(p, kind) for p in files]

    def stream() -> Iterator:
        return pieces(files, formats, kind, text_field, _CHUNK_CHARS)

    if tok is None:
        tok = _char_tokenizer(stream, separator, unknown)
    elif tokenizer == "dna" and separator is None and formats != ["text"]:
        # several records need the separator token; a lone sequence keeps the vocabulary of 5
        tok = DNATokenizer(separator=any(p is BREAK for p in stream()))
    tok_config = tok.to_config()
    info = _provenance(files, formats, text_field, separator)
    try:
        existing = TokenFile.read(out_path)
        if existing.source == info and existing.tokenizer == tok_config:
            return existing
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
        pass

    what = f"data {str(source)!r}" if not bundled else "the bundled text"
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    return write_tokens(
        _token_stream(stream(), _separator_ids(tok, separator), what),
        tok,
        out_path,
        info,
        dtype,
        empty_message=f"{what} is empty"
        if bundled or len(files) > 1
        else f"data file {str(files[0])!r} is empty",
    )


def encode_file(
    source: str | os.PathLike, tokenizer: Tokenizer, *, text_field: str = "text", separator: str | None = None
) -> np.ndarray:
    """The tokens of data files read as for training (`build_token_file`), with a given tokenizer (a
    trained model's, to score a file), in memory.

    Args:
        source: a text, FASTA or JSONL file (`.gz` too), a directory or a glob of them.
        tokenizer: the tokenizer; its unknown-character policy applies.
        text_field: the field of a JSONL object that holds its text.
        separator: text between documents instead of the tokenizer's end-of-document token.

    Returns:
        int64 `[n]`.
    """
    files = resolve_files(source)
    kind = tokenizer.to_config()["type"]
    formats = [file_format(p, kind) for p in files]
    stream = pieces(files, formats, kind, text_field, _CHUNK_CHARS)
    sep = _separator_ids(tokenizer, separator)
    parts = [_ids(tokenizer, p).astype(np.int64) for p in _token_stream(stream, sep, f"data {str(source)!r}")]
    if sum(p.size for p in parts) == 0:
        raise DataError(f"data {str(source)!r} holds no tokens")
    return np.concatenate(parts)
