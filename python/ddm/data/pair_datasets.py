"""The named prompt / response datasets (`ddm data list`): generated in the project, cached as JSONL.

A pair dataset is made by a seeded generator (no download), written once to
`$DDM_CACHE/datasets/<name>/pairs-v<version>.jsonl`, and read by `ddm.data.pairs.load_pairs`; its
held-out set is fixed: the last `heldout` pairs of the file, whatever `val_fraction` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddm import _fs
from ddm.data.formats import EOS_CHAR
from ddm.data.pairs import PairCorpus, load_pairs
from ddm.data.sources import cache_dir
from ddm.data.sudoku import BLANK, make_puzzles
from ddm.errors import InvalidArgument

__all__ = ["PAIR_DATASETS", "PairDataset", "list_pair_datasets", "load_pair_data", "pair_dataset_file"]


_VERSION = 1  # bump when a generator's output changes: the cached files are then made again


@dataclass(frozen=True)
class PairDataset:
    """A generated pair dataset.

    Attributes:
        name: its name in configs and on the command line.
        description: one line for `ddm data list`.
        make: `make(seed) -> list[(prompt, response)]`, the pairs in file order (the held-out ones last).
        heldout: how many of the last pairs are held out.
        tokenizer: its tokenizer config.
        seq_len: the length its pairs are padded to.
    """

    name: str
    description: str
    make: Callable[[int], list[tuple[str, str]]]
    heldout: int
    tokenizer: dict[str, Any]
    seq_len: int


def _sudoku(blanks: int, train: int, heldout: int) -> Callable[[int], list[tuple[str, str]]]:
    def make(seed: int) -> list[tuple[str, str]]:
        return make_puzzles(seed, train + heldout, blanks)

    return make


_SUDOKU_TOKENIZER = {
    "type": "char",
    "chars": "".join(sorted("123456789" + BLANK + EOS_CHAR)),
    "eos": EOS_CHAR,
}
_SUDOKU_LEN = 2 * 81 + 1  # givens, solution, EOS

PAIR_DATASETS: dict[str, PairDataset] = {
    d.name: d
    for d in [
        PairDataset(
            "sudoku",
            "Sudoku, 45 blanks, unique solutions (ddm.data.sudoku, seed 0): 20,000 train + 1,000 held out",
            _sudoku(45, 20_000, 1_000),
            1_000,
            _SUDOKU_TOKENIZER,
            _SUDOKU_LEN,
        ),
        PairDataset(
            "sudoku-easy",
            "Sudoku, 20 blanks, unique solutions (ddm.data.sudoku, seed 0): 20,000 train + 1,000 held out",
            _sudoku(20, 20_000, 1_000),
            1_000,
            _SUDOKU_TOKENIZER,
            _SUDOKU_LEN,
        ),
    ]
}


def list_pair_datasets() -> list[dict[str, Any]]:
    """One dict per pair dataset: name, description, pairs held out, and whether it is generated yet."""
    root = cache_dir() / "datasets"
    return [
        {
            "name": d.name,
            "description": d.description,
            "heldout": d.heldout,
            "cached": (root / d.name / f"pairs-v{_VERSION}.jsonl").is_file(),
        }
        for d in PAIR_DATASETS.values()
    ]


def pair_dataset_file(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The JSONL of the pair dataset `name`, generated (seed 0) into the cache on first use."""
    d = PAIR_DATASETS[name]
    root = Path(cache) if cache is not None else cache_dir()
    path = root / "datasets" / name / f"pairs-v{_VERSION}.jsonl"
    if not path.is_file():
        lines = [json.dumps({"prompt": p, "response": r}) for p, r in d.make(0)]
        path.parent.mkdir(parents=True, exist_ok=True)
        _fs.write_text(path, "\n".join(lines) + "\n")
    return path


def load_pair_data(
    data: str, *, tokenizer: str | dict[str, Any], val_fraction: float, seq_len: int, **options: Any
) -> PairCorpus:
    """The pairs of a run: a pair dataset by name (its tokenizer unless `tokenizer` is a config dict, its
    fixed held-out set), or a JSONL file (`ddm.data.pairs.load_pairs`)."""
    if data not in PAIR_DATASETS:
        return load_pairs(data, seq_len=seq_len, tokenizer=tokenizer, val_fraction=val_fraction, **options)
    d = PAIR_DATASETS[data]
    if seq_len < d.seq_len:
        raise InvalidArgument(f"dataset {data!r} needs seq_len >= {d.seq_len}, got {seq_len}")
    path = pair_dataset_file(data)
    total = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    tok = tokenizer if isinstance(tokenizer, dict) else d.tokenizer
    return load_pairs(path, seq_len=seq_len, tokenizer=tok, val_fraction=d.heldout / total, **options)
