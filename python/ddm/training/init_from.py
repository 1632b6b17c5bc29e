"""Where a fine-tuning run starts (`init_from`, `ddm train --init-from`): a trained model's weights.

The starting model is read by `ddm.load` (`ddm.io.load` routes the formats: a ddm checkpoint or run, a
`save_pretrained` directory, a published SEDD checkpoint, a Hub id). The run keeps its architecture,
graph, schedule and tokenizer (the data is tokenised with that tokenizer); the run's config gives the
training fields, the dropout and `seq_len` (the rotary table is not a weight, so a shorter or longer
`seq_len` loads the same weights). Every checkpoint of the run records where it started under
`"init_from"` in its `config.json`: the source as given, the directory it resolved to, and the weights'
step when the source is a training checkpoint.

A resumed run takes the architecture, graph, schedule and tokenizer from its own checkpoint, so resuming
does not need the starting model any more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ddm import graphs, schedules, tokenizers
from ddm.errors import CheckpointError
from ddm.io.load import load
from ddm.model import ScoreModel
from ddm.model.autoregressive import ARModel
from ddm.model.transformer import ModelConfig

__all__ = ["Start", "resolve_start"]


@dataclass(frozen=True)
class Start:
    """What a run started from a trained model builds on.

    Attributes:
        model_config: the architecture (the run's dropout and seq_len).
        tokenizer: the tokenizer config the data is tokenised with.
        graph, schedule: their configs (None for the autoregressive baseline).
        weights: the starting state dict, or None on resume (the checkpoint's weights are restored).
        record: what the run records under `"init_from"`.
    """

    model_config: ModelConfig
    tokenizer: dict[str, Any]
    graph: dict[str, Any] | None
    schedule: dict[str, Any] | None
    weights: dict[str, torch.Tensor] | None
    record: dict[str, Any]

    def build(self, objective: str) -> Any:
        """A new model of the starting architecture, with the starting weights when there are any."""
        tok_vocab = _vocab(self)
        if objective == "autoregressive":
            model = ARModel(self.model_config, tok_vocab)
        else:
            model = ScoreModel(
                self.model_config, graphs.from_config(self.graph), schedules.from_config(self.schedule)
            )
        if self.weights is not None:
            model.load_state_dict(self.weights)
        return model


def _vocab(start: Start) -> int:
    if start.graph is not None:
        return int(graphs.from_config(start.graph).vocab_size)
    return int(start.record.get("vocab_size", 0))


def _check(
    cfg: Any, model_config: ModelConfig, graph: dict | None, autoregressive: bool, source: str
) -> None:
    """Refuses a run whose objective or graph the starting model was not made for."""
    where = f"init_from {source!r}"
    if cfg.objective == "autoregressive" and not autoregressive:
        raise CheckpointError(
            f"{where} is a diffusion model: objective 'autoregressive' needs an ARModel checkpoint"
        )
    if cfg.objective != "autoregressive" and autoregressive:
        raise CheckpointError(f"{where} is an autoregressive model: train it with objective 'autoregressive'")
    if autoregressive:
        return
    kind = graphs.from_config(graph).kind if graph is not None else None
    if kind != cfg.graph:
        raise CheckpointError(
            f"{where} has the {kind!r} graph, the run's config says graph = {cfg.graph!r}: "
            f"set graph = {kind!r}"
        )
    want_subs = cfg.objective == "masked" or (cfg.objective == "block" and cfg.block_loss == "masked")
    if model_config.subs != want_subs:
        made = "the masked NELBO (SUBS output)" if model_config.subs else "a score (DWDSE)"
        raise CheckpointError(
            f"{where} was built for {made}; objective {cfg.objective!r} needs the other output: "
            f"use objective {'masked' if model_config.subs else 'diffusion'!r}"
        )
    if (cfg.objective == "block") != (model_config.block_size > 0):
        raise CheckpointError(
            f"{where} has block_size {model_config.block_size}: it needs objective 'block' iff > 0"
        )
    if cfg.objective == "block" and cfg.block_size != model_config.block_size:
        raise CheckpointError(
            f"{where} has block_size {model_config.block_size}, the config {cfg.block_size}"
        )


def _named_tokenizer(cfg: Any, model: Any) -> Any:
    """The run's named tokenizer for a starting model that carries none (a SEDD checkpoint whose vocabulary
    is not GPT-2's), when its vocabulary has the model's size; else a CheckpointError."""
    vocab = model.vocab_size if isinstance(model, ARModel) else model.graph.vocab_size
    if cfg.tokenizer != "char":
        tok = tokenizers.resolve(cfg.tokenizer)
        if tok.vocab_size == vocab:
            return tok
    raise CheckpointError(
        f"init_from {cfg.init_from!r} carries no tokenizer, and tokenizer = {cfg.tokenizer!r} has not its "
        f"{vocab} tokens: name the tokenizer it was trained with (--tokenizer)"
    )


def resolve_start(cfg: Any, saved: dict[str, Any] | None = None) -> Start | None:
    """The `Start` of a run with `cfg.init_from` (None without it).

    Args:
        cfg: the run's `TrainConfig`.
        saved: on resume, the checkpoint's `config.json` (architecture, graph, schedule and tokenizer are
            taken from it, not from the starting model).

    Raises:
        CheckpointError: the starting model cannot be read, or its graph or output does not fit the
            run's objective and graph.
    """
    if not cfg.init_from:
        return None
    if saved is not None:
        model_config = ModelConfig.from_dict(saved["model"])
        record = saved.get("init_from", {"source": cfg.init_from})
        start = Start(model_config, saved["tokenizer"], saved["graph"], saved["schedule"], None, record)
        _check(cfg, model_config, saved["graph"], saved["graph"] is None, cfg.init_from)
        return start
    model = load(cfg.init_from, ema=True)
    autoregressive = isinstance(model, ARModel)
    graph = None if autoregressive else model.graph.to_config()
    _check(cfg, model.config, graph, autoregressive, cfg.init_from)
    tokenizer = getattr(model, "tokenizer", None) or _named_tokenizer(cfg, model)
    model_config = dataclasses.replace(model.config, dropout=cfg.dropout, seq_len=cfg.seq_len)
    model_config.validate()
    path = getattr(model, "checkpoint_path", None)
    record = {"source": cfg.init_from, "path": None if path is None else str(path)}
    if autoregressive:
        record["vocab_size"] = model.vocab_size
    return Start(
        model_config,
        tokenizer.to_config(),
        graph,
        None if autoregressive else model.schedule.to_config(),
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        record,
    )
