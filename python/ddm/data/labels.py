"""Class labels of a JSONL corpus, one per document, for label-conditioned training.

`read_labels(data, label_field)` reads the label of every non-empty document of JSONL data (the string
or integer at `label_field`; a line without it is a `DataError` naming the file and the line).
`LabelledCorpus` pairs a `Corpus` with one label id per token: a document's tokens and the separator
after it carry its label. The training block of row j starts at the keyed offset of `Corpus.batch_at`;
its label is the label at that offset (`labels_at`), so a block that runs into the next document keeps
the label of the one it starts in. Label ids index the sorted label names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ddm.data.corpus import Corpus, keyed_offsets
from ddm.data.formats import _open_text, file_format, resolve_files
from ddm.errors import DataError

__all__ = ["LabelledCorpus", "read_labels"]


def _line_label(line: str, where: str, text_field: str, label_field: str) -> tuple[str, str] | None:
    """`(text, label)` of one JSONL line, None for an empty text (no document)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        raise DataError(f"{where} has no text field {text_field!r}")
    if label_field not in obj:
        raise DataError(
            f"{where} has no label field {label_field!r} (it has {sorted(obj)[:8]}); every line needs a "
            "label with --label-field"
        )
    label = obj[label_field]
    if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
        raise DataError(
            f"{where}: label field {label_field!r} must be a non-empty string or an int, got {label!r}"
        )
    return None if not obj[text_field] else (obj[text_field], str(label))


def read_labels(
    data: str | os.PathLike, label_field: str, text_field: str = "text"
) -> tuple[list[str], list[str]]:
    """`(texts, labels)` of the non-empty documents of JSONL `data` (a file, directory or glob), in the
    order `ddm.data.formats.pieces` reads them.

    Raises:
        DataError: a file that is not JSONL, a line that is not a JSON object with the text, or a line
            without `label_field` (the file and line are named).
    """
    texts: list[str] = []
    labels: list[str] = []
    for path in resolve_files(data):
        if file_format(Path(path), "char") != "jsonl":
            raise DataError(f"--label-field needs JSONL data (.jsonl), got {str(path)!r}")
        with _open_text(Path(path)) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                doc = _line_label(line, f"data file {str(path)!r} line {lineno}", text_field, label_field)
                if doc is not None:
                    texts.append(doc[0])
                    labels.append(doc[1])
    if not labels:
        raise DataError(f"{str(data)!r} holds no labelled document")
    return texts, labels


class LabelledCorpus(Corpus):
    """A `Corpus` with a label id per token (see the module docstring).

    Args:
        corpus: the corpus of the JSONL data (its tokens in document order).
        texts, labels: `read_labels`' documents and labels (the same data).
        separator_len: the tokens between two documents (1: the end-of-document token).
    """

    def __init__(self, corpus: Corpus, texts: list[str], labels: list[str], separator_len: int) -> None:
        super().__init__(corpus.tokens, corpus.tokenizer, corpus.val_fraction)
        self.names = sorted(set(labels))
        index = {name: i for i, name in enumerate(self.names)}
        lengths = [len(self.tokenizer.encode(t)) + separator_len for t in texts]
        lengths[-1] -= separator_len  # no separator after the last document
        if sum(lengths) != self.tokens.size:
            raise DataError(
                f"the labels do not line up with the tokens ({sum(lengths)} labelled tokens, "
                f"{self.tokens.size} in the corpus): use a tokenizer that encodes each document on its own"
            )
        ids = np.array([index[name] for name in labels], dtype=np.int64)
        self.token_labels = np.repeat(ids, lengths)  # (T,)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def labels_at(
        self, seq_len: int, seed: int, step: int, rows: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The label ids `[b]` of the blocks `batch_at(seq_len, seed, step, rows)` (or of the blocks at
        `offsets`, another data order's): the label at each block's first token."""
        self.check_seq_len(seq_len)
        if offsets is None:
            offsets = keyed_offsets(seed, step, rows, self.n_train - seq_len + 1)  # (b,)
        return torch.from_numpy(self.token_labels[offsets.numpy()])
