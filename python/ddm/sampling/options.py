"""The run options of `ddm.sample` that are not a predictor's: the grid's end and the caches, and the
block-diffusion length and stop rule. Listed once here; `ddm.sample` reads them from the fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ddm.errors import InvalidArgument

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """What `ddm.sample` takes besides the predictor's options (see `ddm.sample` for each)."""

    prefix: Any = None  # token ids fixed at the start
    suffix: Any = None  # token ids fixed at the end
    infill: Any = None  # other fixed positions: {position: id} or (mask, tokens)
    progress: bool = False  # a tqdm progress bar on stderr
    denoise: bool = True  # end with the denoising step (absorbing: no MASK left)
    eps: float = 1e-5  # the last time of the grid, in (0, 1)
    cache: bool | None = None  # reuse a row's output while its tokens do not change (None: when exact)
    max_len: int | None = None  # block models: the tokens to generate, the prefix included
    stop_at_eos: bool = False  # block models: stop each row at its first eos_id
    eos_id: int | None = None  # block models: the end-of-sequence id (default: the tokenizer's)
    kv_cache: bool = True  # block models: cache the keys and values of finished blocks
    prompt: Any = None  # a response to this prompt (text or ids): only the new tokens are returned
    max_new_tokens: int | None = None  # with prompt: the tokens to generate after it
    # guidance (ddm.sampling.guidance)
    label: Any = None  # a labelled model's class: a name or id, or one per row
    guidance: float | None = None  # the guidance strength gamma >= 0 (1: conditional, 0: unconditional)
    guidance_rule: str | None = None  # "dcfg" (absorbing default) or "rates" (uniform default)

    def __post_init__(self) -> None:
        for name in ("stop_at_eos", "kv_cache", "denoise", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if self.cache is not None and not isinstance(self.cache, bool):
            raise InvalidArgument(f"cache must be a bool or None, got {type(self.cache).__name__}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
        """`(RunOptions of the run keys, the other keys)`."""
        mine = {k: options[k] for k in cls.names() if k in options}
        return cls(**mine), {k: v for k, v in options.items() if k not in mine}
