"""The corpus of a run: tokenized into the run directory once, its source recorded, read back from there.

A text corpus is tokenized into `<run_dir>/data/tokens.bin` (`ddm.data.load_corpus`). The run records its
source in every checkpoint's `config.json` under `"data"` (`source_record`): the absolute path, the size
and a SHA-256 of the file's content. A resumed run and the held-out split of a checkpoint
(`heldout_blocks`) then read the cached tokens, whatever the working directory, and compare the source
file with the record: an edited file is named in a warning (the cached tokens are still the run's), or,
when no cache is left to fall back on, refused.

Named datasets (`ddm data list`) keep their own cache and split, and are recorded by name.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ddm.data import BUNDLED, Corpus, TokenFile, bundled_path, load_corpus
from ddm.data.formats import resolve_files
from ddm.data.pair_datasets import PAIR_DATASETS, load_pair_data
from ddm.data.pairs import PairCorpus
from ddm.data.registry import REGISTRY
from ddm.errors import DataError
from ddm.io import checkpoint as ckpt
from ddm.io import run
from ddm.tokenizers import from_config

__all__ = ["cached_tokens", "file_sha256", "heldout_blocks", "load_run_corpus", "source_record"]

_READ = 1 << 20  # bytes hashed at a time


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, hex, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def source_record(data: str) -> dict[str, Any]:
    """What a checkpoint records of its corpus: `{"name"}` for a named dataset; else `data` as given, the
    absolute `source` (a file, a directory or a glob) and, for each of its files, the absolute `path`, the
    `size` and the content `sha256`.

    Raises:
        FileNotFoundError: the data names no file.
    """
    if data in REGISTRY or data in PAIR_DATASETS:
        return {"name": data}
    if data in ("", BUNDLED):
        source, files = str(bundled_path()), [bundled_path()]
    else:
        source, files = os.path.abspath(data), resolve_files(data)
    entries = [{"path": str(f.resolve()), "size": f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    return {"data": data, "source": source, "files": entries}


def _readable_source(record: dict[str, Any] | None, data: str) -> str:
    """The recorded absolute source when it is still there (a relative `data` may name another file, or
    nothing, from another working directory), else `data`."""
    if not record or "source" not in record:
        return data
    try:
        resolve_files(record["source"])
    except (FileNotFoundError, DataError):
        return data
    return record["source"]


def cached_tokens(run_dir: str | os.PathLike) -> TokenFile | None:
    """The token file a run cached in `<run_dir>/data/`, or None if it has none (or it is damaged)."""
    path = Path(run_dir) / "data" / "tokens.bin"
    try:
        return TokenFile.read(path)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _seen(cache: TokenFile | None) -> dict[str, tuple[int, int]]:
    """The `(size, mtime_ns)` of each file the cached tokens were made from, by absolute path."""
    source = cache.source if cache is not None else {}
    infos = source.get("files", [source])
    return {i["path"]: (i.get("size"), i.get("mtime_ns")) for i in infos if "path" in i}


def _changed(record: dict[str, Any] | None, cache: TokenFile | None) -> str | None:
    """A sentence naming the source files whose content differs from `record`'s (or that were added to
    its directory or glob), else None. A file that is gone is not a change: the cache is what is left."""
    if not record or "files" not in record:
        return None
    seen = _seen(cache)
    changed = []
    for entry in record["files"]:
        path = Path(entry["path"])
        if not path.is_file():
            continue
        st = path.stat()
        if seen.get(str(path)) == (st.st_size, st.st_mtime_ns):
            continue  # the file the cache was made from, untouched since (the record hashed that file)
        if file_sha256(path) != entry["sha256"]:
            changed.append(f"{str(path)!r} ({entry['size']} -> {st.st_size} bytes, another sha256)")
    try:
        now = {str(p.resolve()) for p in resolve_files(record["source"])}
    except (FileNotFoundError, DataError):
        now = set()
    added = sorted(now - {e["path"] for e in record["files"]})
    changed += [f"{p!r} (added)" for p in added]
    if not changed:
        return None
    return f"data file {', '.join(changed)} changed since the run was trained"


def load_run_corpus(
    data: str,
    run_dir: Path,
    *,
    record: dict[str, Any] | None = None,
    pairs: dict[str, Any] | None = None,
    **options: Any,
) -> Corpus | PairCorpus:
    """The corpus of a run: the tokens cached in `run_dir` when `record` (the checkpoint's `"data"`, on
    resume) is given and the cache exists, else `ddm.data.load_corpus`, which tokenizes into the cache
    (from the recorded absolute path, on resume).

    Raises:
        DataError: on resume, the source changed since it was recorded and no cache is left.

    Args:
        data: the config's `data`.
        run_dir: the run directory.
        record: the checkpoint's `source_record`, or None for a new run (or a checkpoint without one).
        pairs: the keywords of `ddm.data.pairs.load_pairs` (`TrainConfig.pair_options`) when the data is
            prompt / response pairs: they are read again from their source (or the named dataset).
        **options: the keywords of `load_corpus` (`TrainConfig.corpus_options`): `tokenizer`,
            `val_fraction`, and how the files are read.
    """
    if pairs is not None:
        return load_pair_data(
            data, tokenizer=options["tokenizer"], val_fraction=options["val_fraction"], **pairs
        )
    cache = cached_tokens(run_dir) if data not in REGISTRY and record is not None else None
    if cache is None:
        changed = _changed(record, None)
        if changed is not None:
            raise DataError(
                f"{changed}, and {str(run_dir)!r} holds no cached tokens to resume on: restore the file, "
                "or start a new run on the new data"
            )
        data = _readable_source(record, data)
        return load_corpus(data, run_dir / "data", **options)
    changed = _changed(record, cache)
    if changed is not None:
        print(
            f"ddm train: warning: {changed}; training continues on the tokens cached in "
            f"{str(cache.path)!r}, the run's own",
            file=sys.stderr,
            flush=True,
        )
    return Corpus(cache.open(), from_config(cache.tokenizer), options["val_fraction"])


def heldout_blocks(checkpoint: str | os.PathLike, seq_len: int) -> torch.Tensor:
    """The held-out tail of the corpus a checkpoint was trained on, as int64 `[M, seq_len]` blocks.

    Reads the tokens cached in the checkpoint's run directory (`<run_dir>/data/tokens.bin`), whatever the
    working directory; without that cache, re-reads the source at the absolute path the checkpoint
    recorded (or its `data` as given, for an older checkpoint). An edited source file is named: a warning
    when the cache is used, a `DataError` when the file would have to be re-read.

    Raises:
        DataError: the source changed and no cache is left, or the run has no held-out split.
        FileNotFoundError: neither the cache nor the source file exists.
    """
    path = ckpt.resolve(checkpoint)
    cfg = ckpt.read_config(path)
    train, record = cfg["train"], cfg.get("data")
    run_dir = run.run_dir_of(path)  # None for a checkpoint outside its run (copied or downloaded)
    cache = cached_tokens(run_dir) if run_dir is not None and train["data"] not in REGISTRY else None
    if cache is not None and cache.tokenizer == cfg["tokenizer"]:
        changed = _changed(record, cache)
        if changed is not None:
            print(
                f"ddm: warning: {changed}; scoring the held-out tail of the tokens cached in the run",
                file=sys.stderr,
            )
        corpus = Corpus(cache.open(), from_config(cache.tokenizer), train["val_fraction"])
        return _tail(corpus, seq_len)
    changed = _changed(record, None)
    if changed is not None:
        raise DataError(
            f"{changed}, and no run directory holds its cached tokens: its tail is not the held-out split "
            "the checkpoint was evaluated on; give the text to score with --data"
        )
    data = _readable_source(record, train["data"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            read = {k: train[k] for k in ("text_field", "separator") if k in train}  # older: the defaults
            read["separator"] = read.get("separator") or None
            corpus = load_corpus(
                data, Path(tmp), tokenizer=cfg["tokenizer"], val_fraction=train["val_fraction"], **read
            )
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}; the checkpoint was trained on it: pass the data explicitly"
            ) from None
        return _tail(corpus, seq_len).clone()


def _tail(corpus: Corpus, seq_len: int) -> torch.Tensor:
    if corpus.n_val == 0:
        raise DataError("the checkpoint was trained with val_fraction = 0: there is no held-out split")
    return corpus.val_blocks(seq_len)
