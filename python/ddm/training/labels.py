"""Label-conditioned training for classifier-free guidance: the corpus's labels, the keyed
label dropout, and the network called with the labels.

With `TrainConfig.label_field`, the corpus is a `ddm.data.labels.LabelledCorpus`, the model gets
`num_classes` and `label_names` from it (stored in the checkpoint's model config), and row j of step s
trains with its block's label, replaced by the null label (`num_classes`) when the uniform keyed by
`(seed, s, j)` on the `train_label_drop` stream is below `cond_dropout`: like the data offsets and the
noise, the dropped labels do not depend on the number of processes or micro-batches.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ddm import _rng
from ddm.data.labels import LabelledCorpus, read_labels
from ddm.errors import InvalidArgument
from ddm.model.transformer import ModelConfig

__all__ = ["batch_labels", "keyed_label_drop", "labelled_corpus", "with_labels", "with_label_fn"]

_U64 = (1 << 64) - 1
STREAM_TRAIN_LABEL_DROP = _rng.STREAMS["train_label_drop"]


def labelled_corpus(corpus: Any, cfg: Any) -> LabelledCorpus:
    """The run's corpus with the labels at `cfg.label_field` of its JSONL data `cfg.data`."""
    texts, labels = read_labels(cfg.data, cfg.label_field, cfg.text_field)
    sep = len(corpus.tokenizer.encode(cfg.separator)) if cfg.separator else 1
    return LabelledCorpus(corpus, texts, labels, sep)


def with_labels(config: ModelConfig, corpus: Any) -> ModelConfig:
    """`config` with the corpus's label count and names (unchanged for an unlabelled corpus)."""
    if not isinstance(corpus, LabelledCorpus):
        return config
    return replace(config, num_classes=corpus.num_classes, label_names=list(corpus.names))


def keyed_label_drop(
    labels: torch.Tensor, p: float, null: int, seed: int, step: int, rows: torch.Tensor
) -> torch.Tensor:
    """`labels` `[b]` with each set to `null` with probability `p`, keyed by `(seed, step, row)`."""
    if not 0.0 <= p < 1.0:
        raise InvalidArgument(f"cond_dropout must be in [0, 1), got {p!r}")
    u = _rng.uniforms(seed & _U64, STREAM_TRAIN_LABEL_DROP, step, rows.cpu(), 1)[:, 0]  # (b,) float64
    return torch.where(u.to(labels.device) < p, torch.full_like(labels, null), labels)


def batch_labels(corpus: Any, order: Any, cfg: Any, step: int, rows: torch.Tensor) -> torch.Tensor | None:
    """The training labels `[b]` of rows `rows` of step `step` (dropped ones are the null label), or None
    for an unlabelled corpus. `order` is the run's data order (`ddm.data.order`): an epoch order gives
    the windows' offsets; the random order reads `Corpus.batch_at`'s keyed offsets."""
    if not isinstance(corpus, LabelledCorpus):
        return None
    offsets = order.offsets(step, rows) if hasattr(order, "offsets") else None
    labels = corpus.labels_at(cfg.seq_len, cfg.seed, step, rows, offsets)
    return keyed_label_drop(labels, cfg.cond_dropout, corpus.num_classes, cfg.seed, step, rows)


def with_label_fn(fn: Any, labels: torch.Tensor | None) -> Any:
    """The objective's network call `fn` with `label=labels` added (`fn` itself when None)."""
    if labels is None:
        return fn
    return lambda *args, **kwargs: fn(*args, label=labels, **kwargs)
