"""Training data: text corpora as memory-mapped token files, an honest held-out split, random blocks.

A corpus is tokenized once into a flat token file (`np.uint16` when the vocabulary fits, else
`np.uint32`) with a JSON sidecar, and then read through `np.memmap`, so a corpus larger than memory
streams from disk; the text is read in chunks while tokenizing. The held-out split is the contiguous
tail of the token stream (the last `val_fraction`), never seen in training. Training batches are blocks
of `seq_len` tokens at random offsets: `Corpus.batch_at` keys the offset of row j of step s by
(seed, s, j), so the data position is the step alone and any process can read its own rows of a step
(`ddm.distributed`); `Corpus.batch` draws from a `torch.Generator` instead.

The default corpus is the bundled text of Hamlet (public domain, Project Gutenberg), `bundled_path()`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddm.tokenizers import CharTokenizer, Tokenizer, from_config, get

__all__ = [
    "BUNDLED",
    "Corpus",
    "TokenFile",
    "blocks",
    "bundled_path",
    "bundled_text",
    "build_token_file",
    "load_corpus",
    "read_text",
]

BUNDLED = "hamlet"  # the name that selects the bundled text in configs
_CHUNK_CHARS = 1 << 22  # characters read at a time while tokenizing


def bundled_path() -> Path:
    """Path of the bundled corpus (Hamlet, 174k characters), shipped inside the package."""
    ref = resources.files("ddm").joinpath("data/hamlet.txt")
    with resources.as_file(ref) as p:
        return Path(p)


def bundled_text() -> str:
    """The bundled corpus as a string."""
    return resources.files("ddm").joinpath("data/hamlet.txt").read_text(encoding="utf-8")


def read_text(path: str | os.PathLike) -> str:
    """Reads a UTF-8 text file; raises ValueError if it is empty, FileNotFoundError if missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"data file {str(path)!r} is empty")
    return text


def _resolve_source(data: str | os.PathLike | None) -> Path:
    if data is None or str(data) in ("", BUNDLED):
        return bundled_path()
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {str(path)!r} is empty")
    return path


def _iter_chunks(path: Path):
    """Yields the text in pieces that end at a line break where possible (so subword tokenizers see
    whole lines)."""
    carry = ""
    with open(path, encoding="utf-8") as f:
        while True:
            chunk = f.read(_CHUNK_CHARS)
            if not chunk:
                break
            chunk = carry + chunk
            cut = chunk.rfind("\n") + 1
            if cut == 0:
                carry = ""
                yield chunk
            else:
                carry = chunk[cut:]
                yield chunk[:cut]
    if carry:
        yield carry


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
    and `ddm.datasets.write_token_file`.

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
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    encode_array = getattr(tokenizer, "encode_array", None)
    n = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            ids = np.asarray(encode_array(chunk) if encode_array else tokenizer.encode(chunk)).astype(dtype)
            f.write(ids.tobytes())
            n += ids.size
        f.flush()
        os.fsync(f.fileno())
    if n == 0 and empty_message is not None:
        tmp.unlink()
        raise ValueError(empty_message)
    os.replace(tmp, out_path)
    tok_config = tokenizer.to_config()
    meta = {"dtype": dtype, "n_tokens": n, "tokenizer": tok_config, "source": source}
    sidecar = Path(str(out_path) + ".json")
    meta_tmp = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
    with open(meta_tmp, "w") as f:
        f.write(json.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(meta_tmp, sidecar)
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
        (`ddm.distributed.keyed_offsets`), so a process reads only the rows it trains on, and the global
        batch of a step is the same whatever the number of processes or micro-batches.

        Args:
            seq_len: tokens per block.
            seed: the run's seed.
            step: the optimizer step.
            rows: int64 `[b]` global row indices.

        Returns:
            int64 `[b, seq_len]`.
        """
        from ddm.distributed import keyed_offsets

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


def load_corpus(
    data: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    *,
    tokenizer: str | dict[str, Any] = "char",
    val_fraction: float = 0.1,
) -> Corpus:
    """Loads a corpus for training: a text file (tokenized into `cache_dir`), or a token file.

    Args:
        data: a UTF-8 text file, a token file written by `build_token_file` (it has a `.json` sidecar),
            None / `"hamlet"` for the bundled text, or a dataset name of `ddm.datasets.REGISTRY` (its
            train split, with its validation split as the held-out tail; see `ddm.datasets.corpus`).
        cache_dir: where the token file of a text corpus is written.
        tokenizer: `"char"`, a name of `ddm.tokenizers.get`, or a tokenizer config dict (to reuse a
            vocabulary).
        val_fraction: the held-out fraction (contiguous tail).

    Returns:
        The `Corpus`, tokens memory-mapped.
    """
    from ddm.datasets import REGISTRY, corpus

    if isinstance(data, str) and data in REGISTRY:
        # A named dataset (`ddm data list`): its own cache and fixed split, `val_fraction` unused.
        return corpus(data, tokenizer)
    if data is not None and str(data) not in ("", BUNDLED) and Path(str(data) + ".json").is_file():
        tf = TokenFile.read(data)
    else:
        tok = from_config(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        tf = build_token_file(data, Path(cache_dir) / "tokens.bin", tok)
    return Corpus(tf.open(), from_config(tf.tokenizer), val_fraction)
