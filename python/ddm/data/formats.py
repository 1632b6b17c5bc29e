"""A user's data files as a stream of documents: plain text, FASTA, JSONL; one file, a directory or a glob.

`resolve_files` turns `--data` into files: a file, every non-hidden file under a directory (recursively,
in sorted order), or the files a glob pattern matches (sorted). `file_format` tells how each is read,
from its suffix (a trailing `.gz` is decompressed):

- FASTA (`.fa .fasta .fna .faa .ffn .frn .fas .fsa .mpfa`, and any file that starts with `>` read by the
  dna or protein tokenizer): each record's sequence is a document, line breaks and the header dropped
  (`ddm.data.parsers.parse_fasta`);
- JSONL (`.jsonl .ndjson`): one JSON object per line, the string at `text_field` is a document;
- anything else is plain text, one document per file. The dna tokenizer ignores its line breaks (a
  sequence written by `print` ends with one), the protein tokenizer reads `"\\n"` as its separator and
  ignores `"\\r"`, and the bytes tokenizer reads the raw bytes, never decoding them. A suffix of a format
  that is not parsed (`.json`, `.fastq`, `.csv`, ...) is read as text with a warning.

`pieces` yields the stream: text (`str`) or raw token ids (`np.ndarray`, the bytes tokenizer's) of one
document at a time, with `BREAK` between two non-empty documents, where the reader of the stream puts the
end-of-document token or a separator (`ddm.data.tokens.build_token_file`). Text is decoded as UTF-8; an
invalid byte is a `DataError` that names the file and its absolute byte offset.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from ddm.data.parsers import parse_fasta
from ddm.errors import DataError

__all__ = [
    "BREAK",
    "EOS_CHAR",
    "FASTA_SUFFIXES",
    "JSONL_SUFFIXES",
    "file_format",
    "pieces",
    "resolve_files",
    "utf8_error",
]

# The end of a document in the character corpora with documents: ASCII ETX ("end of text"), which text
# almost never holds. `CharTokenizer(eos=EOS_CHAR)` gives it its eos_id; the bytes tokenizer reads it as
# byte 3.
EOS_CHAR = "\x03"
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".faa", ".ffn", ".frn", ".fas", ".fsa", ".mpfa")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Suffixes of formats that are read as plain text, with what to do instead.
_UNPARSED = {
    ".json": "write one JSON object per line as .jsonl (the text in its 'text' field, or the field that "
    "--text-field names)",
    ".fastq": "convert it to FASTA (.fa)",
    ".fq": "convert it to FASTA (.fa)",
    ".gb": "convert it to FASTA (.fa)",
    ".gbk": "convert it to FASTA (.fa)",
    ".embl": "convert it to FASTA (.fa)",
    ".sam": "convert it to FASTA (.fa)",
    ".csv": "write the text column as .jsonl or plain text",
    ".tsv": "write the text column as .jsonl or plain text",
    ".parquet": "write the text column as .jsonl",
    ".xml": "extract the text first",
    ".html": "extract the text first",
    ".zip": "unpack it first (only .gz is decompressed)",
    ".bz2": "decompress it first (only .gz is decompressed)",
    ".xz": "decompress it first (only .gz is decompressed)",
    ".zst": "decompress it first (only .gz is decompressed)",
}
_GLOB_CHARS = frozenset("*?[")
_BINARY_CHUNK = 1 << 22  # bytes read at a time by the bytes tokenizer


class _Break:
    def __repr__(self) -> str:
        return "BREAK"


BREAK = _Break()  # between two documents of the stream of `pieces`


def resolve_files(data: str | os.PathLike) -> list[Path]:
    """The files of `data`: a file, the non-hidden files under a directory, or the files of a glob.

    Raises:
        FileNotFoundError: nothing there, or a glob or directory with no file.
        DataError: a file (of one) that is empty.
    """
    text = str(data)
    path = Path(data)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise FileNotFoundError(f"data directory {text!r} holds no file")
    elif _GLOB_CHARS & set(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no data file matches the pattern {text!r}")
    else:
        raise FileNotFoundError(f"data file {text!r} does not exist")
    if all(p.stat().st_size == 0 for p in files):
        raise DataError(
            f"data file {text!r} is empty" if path.is_file() else f"every file of {text!r} is empty"
        )
    return files


def _suffix(path: Path) -> str:
    """The format suffix of `path`, lowercase, with a trailing `.gz` looked through."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    """UTF-8 text with universal newlines (`"\\r\\n"` read as `"\\n"`), decompressed if `.gz`."""
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8")


def file_format(path: Path, tokenizer_kind: str) -> str:
    """How `path` is read: `"fasta"`, `"jsonl"` or `"text"` (warns on a suffix that is not parsed)."""
    suffix = _suffix(path)
    if suffix in FASTA_SUFFIXES:
        return "fasta"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if tokenizer_kind in ("dna", "protein"):
        with _open_binary(path) as f:
            if f.read(4096).lstrip()[:1] == b">":  # a '>' header: FASTA whatever its name
                return "fasta"
    if suffix in _UNPARSED:
        warnings.warn(
            f"data file {str(path)!r}: {suffix} files are not parsed, so it is read as plain text "
            f"(its markup becomes training text); {_UNPARSED[suffix]}",
            UserWarning,
            stacklevel=3,
        )
    return "text"


def utf8_error(path: str | os.PathLike) -> DataError:
    """The `DataError` for a file that is not valid UTF-8: its first invalid byte and absolute offset.

    The file is decoded again in binary blocks (a decode error of a text stream gives a position inside
    the buffer it was decoding, not in the file).
    """
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open_binary(path) as f:
        while True:
            block = f.read(1 << 20)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                # e.object is the bytes carried over from the previous block followed by this block
                at = offset - (len(e.object) - len(block)) + e.start
                bad = e.object[e.start : e.end].hex(" ")
                where = "of its decompressed content " if path.name.lower().endswith(".gz") else ""
                return DataError(
                    f"data file {str(path)!r} is not valid UTF-8: byte(s) {bad} at byte offset {at} "
                    f"{where}({e.reason}); to train on raw bytes (latin-1 or binary data) use "
                    "--tokenizer bytes"
                )
            if not block:
                break
            offset += len(block)
    return DataError(f"data file {str(path)!r} could not be decoded as UTF-8; try --tokenizer bytes")


def _text_pieces(path: Path, chunk_chars: int) -> Iterator[str]:
    with _open_text(path) as f:
        while piece := f.read(chunk_chars):
            yield piece


def _fasta_documents(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        try:
            for _, seq in parse_fasta(f):
                yield seq
        except ValueError as e:
            raise DataError(f"data file {str(path)!r}: {e}") from None


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"data file {str(path)!r} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where} is not JSON ({e.msg} at column {e.colno}): {line[:60]!r}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where} holds a JSON {type(obj).__name__}, expected an object")
            if text_field not in obj:
                raise DataError(
                    f"{where} has no field {text_field!r} (it has {sorted(obj)[:8]}); choose the field "
                    "with --text-field"
                )
            if not isinstance(obj[text_field], str):
                raise DataError(
                    f"{where}: field {text_field!r} is a {type(obj[text_field]).__name__}, not text"
                )
            yield obj[text_field]


def _documents(path: Path, fmt: str, kind: str, text_field: str, chunk_chars: int) -> Iterator[Iterator]:
    """The documents of one file, each an iterator of its pieces (`str`, or `np.ndarray` raw bytes)."""
    if fmt == "fasta":
        yield from (iter((seq,)) for seq in _fasta_documents(path))
    elif fmt == "jsonl":
        yield from (iter((doc,)) for doc in _jsonl_documents(path, text_field))
    elif kind == "bytes":
        yield _byte_pieces(path)
    elif kind == "dna":  # line breaks ignored
        yield (p.replace("\n", "") for p in _text_pieces(path, chunk_chars))
    elif kind == "protein":  # "\n" is its separator; "\r" of "\r\n" line ends ignored
        yield (p.replace("\r", "") for p in _text_pieces(path, chunk_chars))
    else:
        yield _text_pieces(path, chunk_chars)


def _byte_pieces(path: Path) -> Iterator[np.ndarray]:
    with _open_binary(path) as f:
        while block := f.read(_BINARY_CHUNK):
            yield np.frombuffer(block, dtype=np.uint8)


def pieces(
    files: list[Path], formats: list[str], kind: str, text_field: str = "text", chunk_chars: int = 1 << 22
) -> Iterator[str | np.ndarray | _Break]:
    """The documents of `files` in order: their pieces, with `BREAK` between two non-empty documents.

    Args:
        files: the files (`resolve_files`).
        formats: their formats (`file_format`).
        kind: the tokenizer's `type` (`"char"`, `"bytes"`, `"dna"`, ...): how plain text is read.
        text_field: the field of a JSONL object that holds its text.
        chunk_chars: characters of plain text read at a time.

    Raises:
        DataError: a file that is not UTF-8 (not raised for the bytes tokenizer's plain text), a bad JSONL
            line or FASTA text.
    """
    started = False
    for path, fmt in zip(files, formats, strict=True):
        try:
            for doc in _documents(path, fmt, kind, text_field, chunk_chars):
                opened = False
                for piece in doc:
                    if len(piece) == 0:
                        continue
                    if not opened:
                        if started:
                            yield BREAK
                        started = opened = True
                    yield piece
        except UnicodeDecodeError:
            raise utf8_error(path) from None
