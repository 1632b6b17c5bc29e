"""Training configuration: one flat dataclass, read from TOML, every field documented.

A TOML file may list the fields at top level or group them in tables (`[optim]`, `[model]`, ...): tables
are flattened one level, the table names are only for the reader. Unknown keys are an error. Defaults
follow SEDD's configs (Lou, Meng, Ermon 2024) where they fit a laptop run; where a default differs the
comment gives SEDD's value.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ddm import graphs, schedules
from ddm.data.order import ORDERS
from ddm.data.pair_datasets import PAIR_DATASETS
from ddm.errors import InvalidArgument
from ddm.model.transformer import SIZES, ModelConfig

__all__ = [
    "TrainConfig",
    "load_config",
    "make_graph",
    "make_schedule",
    "resolved_data_order",
    "with_derived_steps",
]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs; `ddm train --config FILE.toml` reads it."""

    # run
    run_dir: str = _f("runs/default", "directory for checkpoints, the log and the plot")
    seed: int = _f(0, "seeds the weights, the data order and the noise: same seed, same run")
    device: str = _f("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    dist_timeout: float = _f(
        600.0,
        "several processes (torchrun): seconds a collective waits for the other ranks before failing; "
        "longer than rank 0's evaluation and checkpoint writing",
    )
    # data
    data: str = _f(
        "hamlet",
        "UTF-8 text file, a token file from ddm.data.build_token_file, 'hamlet', or a dataset name "
        "from `ddm data list` (its own split; val_fraction unused)",
    )
    tokenizer: str = _f(
        "char", "'char' (vocabulary = characters of the corpus), 'bytes', 'gpt2', 'dna' or 'protein'"
    )
    val_fraction: float = _f(0.1, "held-out fraction: the contiguous tail of the corpus, never trained on")
    text_field: str = _f("text", "JSONL data: the field of each object that holds its text")
    separator: str = _f(
        "", "text put between documents (FASTA records, JSONL lines, files); '': the end-of-document token"
    )
    unknown: str = _f(
        "error",
        "'char' tokenizer: what a character outside the vocabulary does at evaluation and sampling time, "
        "'error', 'replace' or 'skip' (recorded in the tokenizer's config)",
    )
    # model
    model: str = _f("tiny", f"model size, one of {sorted(SIZES)} (SEDD: small)")
    hidden: int = _f(0, "override the size's width (0: the size's)")
    heads: int = _f(0, "override the size's number of attention heads (0: the size's)")
    blocks: int = _f(0, "override the size's number of blocks (0: the size's)")
    cond_dim: int = _f(0, "override the size's conditioning width (0: the size's)")
    seq_len: int = _f(128, "tokens per training sequence (SEDD: 1024 GPT-2 tokens)")
    dropout: float = _f(0.1, "dropout in the transformer blocks (SEDD: 0.1)")
    time_conditioning: bool = _f(True, "False: absorbing-only, sigma ignored (docs/math.md section 4)")
    objective: str = _f(
        "diffusion",
        "'diffusion' (a score model, DWDSE), 'masked' (absorbing only: the masked-diffusion NELBO of "
        "MDLM / MD4 with the SUBS output, docs/math.md section 7) or 'autoregressive' (the causal "
        "baseline of ddm.model.autoregressive, next-token cross-entropy; graph and schedule unused) or "
        "'block' (absorbing only: block diffusion, BD3-LM, each block of block_size tokens noised with "
        "its own t given the clean blocks before it, with the block_loss of each block; the network "
        "is time-independent, time_conditioning is not used)",
    )
    block_size: int = _f(16, "objective 'block': tokens per block B' (BD3-LM: 4 to 16); divides seq_len")
    block_loss: str = _f(
        "masked",
        "objective 'block': the loss of each block, 'masked' (the MDLM NELBO with the SUBS output) or "
        "'diffusion' (DWDSE with the scaled score)",
    )
    t_sampling: str = _f(
        "uniform",
        "training times: 'uniform' (t ~ U[eps_t, 1] per sequence), 'stratified' (one t in each of the "
        "batch_size strata of [eps_t, 1] per step, from one keyed offset: lower loss variance) or 'masks' "
        "(the absorbing graph: a masked count per sequence from q(c) ~ c^-1/2, stratified over the batch, "
        "its time drawn given the count and the loss importance-weighted; no 1/t tail, the bound's design)",
    )
    graph: str = _f("absorbing", "forward process: 'absorbing' or 'uniform'")
    schedule: str = _f("loglinear", "noise schedule: 'loglinear' or 'geometric'")
    schedule_eps: float = _f(1e-3, "log-linear schedule: sigma_bar(1) = ln(1 / eps) (SEDD: 1e-3)")
    sigma_min: float = _f(1e-4, "geometric schedule: sigma_bar(0) (SEDD: 1e-4)")
    sigma_max: float = _f(20.0, "geometric schedule: sigma_bar(1) (SEDD: 20)")
    # optimisation
    steps: int = _f(5000, "optimizer steps in total (SEDD: 1.3M at batch 512)")
    batch_size: int = _f(32, "sequences per optimizer step (SEDD: 512)")
    grad_accum: int = _f(1, "micro-batches per step; each holds batch_size / grad_accum sequences")
    optimizer: str = _f(
        "adamw",
        "'adamw' (SEDD), or 'muon': Muon on the transformer blocks' attention and MLP matrices and AdamW "
        "on the other parameters, at the same learning rate (ddm.training.optim)",
    )
    lr: float = _f(3e-4, "peak learning rate (SEDD: AdamW 3e-4)")
    beta1: float = _f(0.9, "AdamW beta1 (SEDD: 0.9)")
    beta2: float = _f(0.999, "AdamW beta2 (SEDD: 0.999)")
    adam_eps: float = _f(1e-8, "AdamW epsilon (SEDD: 1e-8)")
    weight_decay: float = _f(0.0, "AdamW weight decay, and Muon's (SEDD: 0)")
    muon_momentum: float = _f(0.95, "optimizer 'muon': Muon's (Nesterov) momentum")
    warmup_steps: int = _f(500, "linear learning-rate warm-up steps, then lr_decay (SEDD: 2500)")
    lr_decay: str = _f(
        "constant",
        "learning rate after the warm-up: 'constant' (SEDD), 'cosine' or 'linear' (from lr at the end "
        "of the warm-up to lr * lr_final at the last step)",
    )
    lr_final: float = _f(0.1, "lr_decay 'cosine' or 'linear': the last step's learning rate over lr")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off) (SEDD: 1.0)")
    ema_decay: float = _f(
        0.999, "EMA decay, warmed up as min(decay, (1+n)/(10+n)) (SEDD: 0.9999, for runs of 1M steps)"
    )
    eps_t: float = _f(1e-3, "training times t ~ U[eps_t, 1] (SEDD: 1e-3)")
    bf16: bool = _f(True, "bf16 autocast on CUDA")
    cpu_bf16: bool = _f(
        False,
        "bf16 autocast on the CPU too, where it computes in bf16 natively (AVX512-BF16 or AMX, detected at "
        "run time; elsewhere float32): 1.8x the tokens/s of the demo model on such a CPU",
    )
    # logging, evaluation, checkpoints
    log_every: int = _f(10, "steps between lines of the log (log.jsonl)")
    eval_every: int = _f(500, "steps between held-out bound estimates (0: only at the end)")
    eval_sequences: int = _f(32, "held-out blocks for the in-training bound (0: all of them)")
    eval_num_t: int = _f(16, "stratified times per block for the in-training bound")
    save_every: int = _f(1000, "steps between checkpoints (and one at the end)")
    keep_checkpoints: int = _f(2, "how many recent checkpoints to keep")
    plot: bool = _f(True, "write curves.png at each checkpoint (needs matplotlib: the `plot` extra)")
    progress: bool = _f(
        True,
        "console output on stderr: a start summary, then a progress bar on a terminal (log lines "
        "otherwise), and the held-out bound whenever it is evaluated",
    )
    # epochs, held-out best and early stopping
    epochs: float = _f(
        0.0,
        "train for this many epochs of the training split (0: steps decides); steps is then derived: "
        "leave it out (0), or give the same count",
    )
    data_order: str = _f(
        "auto",
        "'random' (each window at an offset keyed by (seed, step, row)), 'epochs' (each epoch reads every "
        "non-overlapping window once, in a fresh order at a fresh phase keyed by (seed, epoch)) or 'auto' "
        "('epochs' when epochs > 0, else 'random')",
    )
    eval_every_epochs: float = _f(0.0, "also evaluate the held-out split every this many epochs (0: off)")
    keep_best: bool = _f(
        False, "keep the checkpoint of the best held-out bound (NLL for 'autoregressive') in <run_dir>/best/"
    )
    early_stop: int = _f(
        0,
        "stop when this many held-out evaluations in a row do not improve on the best (0: off); needs a "
        "held-out split and periodic evaluation, and keeps best/",
    )
    # fine-tuning: prompt / response pairs, random lengths, the starting model, checkpointing
    pairs: bool = _f(
        False,
        "data is a JSONL of prompt / response pairs (ddm.data.pairs): each row is prompt + response + EOS "
        "padded with EOS to seq_len, the prompt never noised nor scored (a pair dataset sets it itself)",
    )
    prompt_field: str = _f("prompt", "pairs: the JSONL field of the prompt")
    response_field: str = _f("response", "pairs: the JSONL field of the response")
    supervise_padding: bool = _f(
        True,
        "pairs: score the EOS padding after the response (LLaDA sec 2.3: the model learns where its answer "
        "ends); false scores only the response and its first EOS (the padding is still noised)",
    )
    random_length_fraction: float = _f(
        0.0, "pretraining: the fraction of steps cut to a random length in 1..seq_len (LLaDA: 0.01)"
    )
    init_from: str = _f(
        "",
        "start from this model's weights (a ddm checkpoint or run, a save_pretrained directory, a SEDD "
        "checkpoint or a Hub id; read by ddm.load); its architecture, graph, schedule and tokenizer are kept",
    )
    grad_checkpointing: bool = _f(
        False, "recompute each transformer block's activations in the backward pass (less memory, more time)"
    )
    # past one device: sharding, checkpoint format, compile (ddm.training.fsdp; docs/distributed.md)
    parallel: str = _f(
        "ddp",
        "several processes: 'ddp' (a whole replica per process) or 'fsdp' (FSDP2: parameters, gradients, "
        "optimizer state and EMA sharded per transformer block)",
    )
    checkpoint_format: str = _f(
        "plain",
        "'plain' (safetensors, written by rank 0) or 'sharded' (torch.distributed.checkpoint, every rank "
        "writes its shard; resumes at any world size; `ddm export` makes it plain)",
    )
    compile: bool = _f(
        False,
        "torch.compile the network the training step calls (off by default: on this 2-core CPU it does "
        "not pay, see docs/distributed.md)",
    )
    async_save: bool = _f(
        False,
        "checkpoint_format 'sharded': write the shards in a background thread while training goes on "
        "(the checkpoint becomes the latest when the next save or the run's end completes it)",
    )
    # class labels for classifier-free guidance (ddm.data.labels, ddm.sampling.guidance)
    label_field: str = _f("", "JSONL data: the field holding each document's class label ('': no labels)")
    cond_dropout: float = _f(
        0.1, "with label_field: the probability a row's label is dropped (the null label)"
    )

    @classmethod
    def help(cls, name: str) -> str:
        """The comment of a field."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}[name]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Builds a config from a (possibly grouped) dict; unknown keys and wrong types are errors."""
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    if k in flat:
                        raise ValueError(f"config key {k!r} is given twice")
                    flat[k] = v
            else:
                if key in flat:
                    raise ValueError(f"config key {key!r} is given twice")
                flat[key] = value
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(flat) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}; known keys: {sorted(known)}")
        values = {k: _coerce(k, v, type(known[k].default)) for k, v in flat.items()}
        if values.get("epochs", 0.0) > 0 and "steps" not in values:
            values["steps"] = 0  # derived from the epochs by the Trainer
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-able flat dict of the fields."""
        return asdict(self)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    def to_toml(self) -> str:
        """The config as TOML, one commented line per field."""
        lines = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool):
                s = "true" if v else "false"
            elif isinstance(v, str):
                s = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                s = repr(v)
            lines.append(f"{f.name} = {s}  # {f.metadata['help']}")
        return "\n".join(lines) + "\n"

    def corpus_options(self) -> dict[str, Any]:
        """The keywords of `ddm.data.load_corpus` this config sets (how the data files are read)."""
        return {
            "tokenizer": self.tokenizer,
            "val_fraction": self.val_fraction,
            "text_field": self.text_field,
            "separator": self.separator or None,
            "unknown": self.unknown,
        }

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` of this run."""
        sized = {k: getattr(self, k) for k in ("hidden", "heads", "blocks", "cond_dim") if getattr(self, k)}
        return ModelConfig.from_size(
            self.model,
            **sized,
            seq_len=self.seq_len,
            dropout=self.dropout,
            time_conditioning=self.time_conditioning and self.objective != "block",
            subs=self.objective == "masked" or (self.objective == "block" and self.block_loss == "masked"),
            block_size=self.block_size if self.objective == "block" else 0,
            bf16=self.bf16,
        )

    def validate(self) -> None:
        """Raises `InvalidArgument` (a ValueError) naming the first bad field."""
        self._validate_ranges()
        self._validate_choices()
        self._validate_combinations()
        self._validate_epochs()
        self._validate_parallel()
        self._validate_labels()
        self.model_config().validate()
        self._validate_finetune()
        if not self.time_conditioning and self.graph != "absorbing":
            raise InvalidArgument("time_conditioning = false needs graph = 'absorbing'")

    def _validate_ranges(self) -> None:
        """The numeric fields: signs, intervals and orderings."""
        positive_int = (  # steps: _validate_epochs (0 is allowed with epochs)
            "seq_len",
            "batch_size",
            "grad_accum",
            "log_every",
            "save_every",
            "keep_checkpoints",
            "eval_num_t",
            "block_size",
        )
        for name in positive_int:
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "eval_sequences", "hidden", "heads", "blocks", "cond_dim"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be >= 0, got {getattr(self, name)!r}")
        unit = (
            "lr_final",
            "val_fraction",
            "dropout",
            "beta1",
            "beta2",
            "ema_decay",
            "muon_momentum",
            "eps_t",
        )
        for name in unit:
            hi_open = name != "lr_final"  # lr_final may be 1; the others stay below 1
            v = getattr(self, name)
            if not (0.0 <= v < 1.0 if hi_open else 0.0 <= v <= 1.0):
                raise InvalidArgument(f"{name} must be in [0, {'1)' if hi_open else '1]'}, got {v!r}")
        for name in ("lr", "adam_eps", "schedule_eps", "sigma_min", "sigma_max"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.dist_timeout > 0:
            raise InvalidArgument(f"dist_timeout must be > 0 seconds, got {self.dist_timeout!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise InvalidArgument("weight_decay and grad_clip must be >= 0")
        if not self.schedule_eps < 1.0:
            raise InvalidArgument(f"schedule_eps must be in (0, 1), got {self.schedule_eps!r}")
        if not self.sigma_min < self.sigma_max:
            raise InvalidArgument(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")

    def _validate_finetune(self) -> None:
        """The fine-tuning fields."""
        if not 0.0 <= self.random_length_fraction < 1.0:
            raise InvalidArgument(
                f"random_length_fraction must be in [0, 1), got {self.random_length_fraction!r}"
            )
        if self.random_length_fraction > 0 and self.is_pairs():
            raise InvalidArgument(
                "random_length_fraction is a pretraining rule: prompt / response pairs have their own lengths"
                " (set it to 0 with pairs)"
            )
        if self.random_length_fraction > 0 and self.objective == "block":
            raise InvalidArgument(
                "random_length_fraction would cut a block: it needs an objective without blocks"
            )
        if self.is_pairs() and (not self.prompt_field or not self.response_field):
            raise InvalidArgument("prompt_field and response_field must be non-empty")

    def is_pairs(self) -> bool:
        """Whether the data is prompt / response pairs (`pairs`, or a pair dataset of the registry)."""
        return self.pairs or self.data in PAIR_DATASETS

    def pair_options(self) -> dict[str, Any] | None:
        """The keywords of `ddm.data.pairs.load_pairs` this config sets, or None for a token stream."""
        if not self.is_pairs():
            return None
        return {
            "seq_len": self.seq_len,
            "supervise_padding": self.supervise_padding,
            "prompt_field": self.prompt_field,
            "response_field": self.response_field,
        }

    def _validate_choices(self) -> None:
        """The fields that name one of a few choices."""
        choices = {
            "model": tuple(sorted(SIZES)),
            "objective": ("diffusion", "masked", "autoregressive", "block"),
            "block_loss": ("masked", "diffusion"),
            "lr_decay": ("constant", "cosine", "linear"),
            "t_sampling": ("uniform", "stratified", "masks"),
            "graph": ("absorbing", "uniform"),
            "schedule": ("loglinear", "geometric"),
            "tokenizer": ("char", "bytes", "gpt2", "dna", "protein"),
            "optimizer": ("adamw", "muon"),
            "unknown": ("error", "replace", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                listed = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
                raise InvalidArgument(f"{name} must be {listed}, got {getattr(self, name)!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise InvalidArgument(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def _validate_labels(self) -> None:
        """`cond_dropout` in [0, 1); labels need a diffusion objective."""
        if not 0.0 <= self.cond_dropout < 1.0:
            raise InvalidArgument(f"cond_dropout must be in [0, 1), got {self.cond_dropout!r}")
        if self.label_field and self.objective not in ("diffusion", "masked"):
            raise InvalidArgument(
                f"label_field needs objective 'diffusion' or 'masked' (got {self.objective!r}): labels "
                "condition the score network"
            )
        if self.label_field and self.pairs:
            raise InvalidArgument(
                "label_field reads labelled JSONL documents; it does not combine with pairs"
            )

    def _validate_combinations(self) -> None:
        """The fields that constrain each other."""
        if self.objective in ("masked", "block") and self.graph != "absorbing":
            raise InvalidArgument(
                f"objective {self.objective!r} needs graph 'absorbing' (it has a MASK), got {self.graph!r}"
            )
        if self.objective == "block" and self.seq_len % self.block_size:
            raise InvalidArgument(f"block_size ({self.block_size}) must divide seq_len ({self.seq_len})")
        if self.t_sampling == "masks" and (self.graph != "absorbing" or self.objective == "block"):
            raise InvalidArgument(
                "t_sampling='masks' draws masked counts of the absorbing graph for one noise level per "
                f"sequence: it needs graph='absorbing' and objective 'diffusion' or 'masked' (got graph="
                f"{self.graph!r}, objective={self.objective!r})"
            )
        if self.batch_size % self.grad_accum:
            raise InvalidArgument(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )

    def _validate_epochs(self) -> None:
        """The epoch fields: epochs, data_order, eval_every_epochs, keep_best, early_stop."""
        if self.steps < 0 or (self.steps == 0 and not self.epochs > 0):
            raise InvalidArgument(
                "steps must be a positive integer (or 0 with epochs > 0: derived from them), got "
                f"{self.steps!r}"
            )
        for name in ("epochs", "eval_every_epochs"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InvalidArgument(f"{name} must be a finite number >= 0, got {v!r}")
        if self.data_order not in ("auto", *ORDERS):
            raise InvalidArgument(f"data_order must be 'auto', 'random' or 'epochs', got {self.data_order!r}")
        if self.early_stop < 0:
            raise InvalidArgument(f"early_stop must be >= 0 evaluations, got {self.early_stop!r}")
        if self.early_stop and not (self.eval_every or self.eval_every_epochs):
            raise InvalidArgument(
                f"early_stop = {self.early_stop} needs periodic held-out evaluation: set eval_every (steps) "
                "or eval_every_epochs"
            )

    def _validate_parallel(self) -> None:
        """The fields of the group "past one device"."""
        for name, allowed in (("parallel", ("ddp", "fsdp")), ("checkpoint_format", ("plain", "sharded"))):
            if getattr(self, name) not in allowed:
                raise InvalidArgument(
                    f"{name} must be {allowed[0]!r} or {allowed[1]!r}, got {getattr(self, name)!r}"
                )
        if self.parallel == "fsdp" and (self.keep_best or self.early_stop):
            raise InvalidArgument(
                "keep_best and early_stop write best/ from rank 0's whole model: not with parallel 'fsdp' "
                "yet; use parallel 'ddp', or keep the periodic checkpoints (keep_checkpoints)"
            )


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"config key {name!r} must be of type {kind.__name__}, got {value!r}")


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Reads a TOML config file and applies overrides (None values are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        try:
            d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    config = TrainConfig.from_dict(d)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return config.replace(**overrides) if overrides else config


def make_graph(config: TrainConfig, vocab_size: int) -> Any:
    """The graph of the run over `vocab_size` real tokens."""
    return graphs.Absorbing(vocab_size) if config.graph == "absorbing" else graphs.Uniform(vocab_size)


def make_schedule(config: TrainConfig) -> Any:
    """The noise schedule of the run."""
    if config.schedule == "loglinear":
        return schedules.LogLinear(eps=config.schedule_eps)
    return schedules.Geometric(sigma_min=config.sigma_min, sigma_max=config.sigma_max)


def resolved_data_order(train: dict[str, Any] | TrainConfig) -> str:
    """The data order a run reads with: its `data_order`, with `'auto'` resolved by its `epochs` (a
    config dict from before these fields: `'random'`)."""
    d = train.to_dict() if isinstance(train, TrainConfig) else train
    order = d.get("data_order", "auto")
    if order == "auto":
        return "epochs" if d.get("epochs", 0.0) > 0 else "random"
    return order


def with_derived_steps(config: TrainConfig, steps_for_epochs: int) -> TrainConfig:
    """`config` with `steps` derived from `epochs` (`steps_for_epochs` optimizer steps); a `steps` that is
    given and disagrees is an `InvalidArgument`. Without epochs, `config` itself."""
    if not config.epochs > 0:
        return config
    if config.steps not in (0, steps_for_epochs):
        raise InvalidArgument(
            f"epochs = {config.epochs:g} is {steps_for_epochs} optimizer steps on this corpus, but steps = "
            f"{config.steps} was given: give one of them (steps 0 derives it), or steps = {steps_for_epochs}"
        )
    return config.replace(steps=steps_for_epochs)
