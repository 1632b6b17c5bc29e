"""The random-stream tags: one table (`ddm._rng.STREAMS`), distinct, and read from it by every user."""

from __future__ import annotations

import torch
from ddm import _rng


def test_stream_tags_are_distinct_32_bit_words() -> None:
    tags = list(_rng.STREAMS.values())
    assert len(set(tags)) == len(tags), "two uses of a seed share a stream tag"
    assert all(isinstance(t, int) and 0 <= t < 2**32 for t in tags)


def test_distinct_tags_give_different_uniforms() -> None:
    rows = torch.arange(3)
    draws = {name: _rng.uniforms(7, tag, 2, rows, 5) for name, tag in _rng.STREAMS.items()}
    names = sorted(draws)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(draws[a], draws[b]), (a, b)


def test_other_layers_use_the_table() -> None:
    """The training and data modules keep named constants for their tags: they must be the table's."""
    import importlib

    corpus = importlib.import_module("ddm.data.corpus")  # the package re-exports a function `corpus`
    distributed = importlib.import_module("ddm.training.distributed")

    assert corpus.STREAM_TRAIN_DATA == _rng.STREAMS["train_data"]
    for name in ("time", "corrupt", "dropout", "time_strata"):
        assert getattr(distributed, f"STREAM_TRAIN_{name.upper()}") == _rng.STREAMS[f"train_{name}"]


def test_no_module_writes_a_stream_tag_of_its_own() -> None:
    """Every tag is written once, in the table: a 0x5EED literal anywhere else in the package is a second
    list that nothing keeps distinct."""
    import re
    from pathlib import Path

    root = Path(_rng.__file__).parent
    stray = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        if p.name != "_rng.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"0x5EED[0-9A-Fa-f]{4}", line)
    ]
    assert not stray, f"stream tags written outside ddm._rng.STREAMS: {stray}"
