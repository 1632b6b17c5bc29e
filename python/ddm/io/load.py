"""The one place that routes a model's storage format: `load(name_or_path)` is `ddm.load`.

Formats, tried in this order:

- a Hub id `"user/repo"`: resolved to its snapshot in the local Hugging Face cache (`ddm.io.hub`),
  then routed as the directory it is;
- a `save_pretrained` directory (`ddm.io.hub.is_hub_dir`);
- a published SEDD checkpoint, directory or weights file (`ddm.io.sedd.is_sedd_checkpoint`);
- a ddm training checkpoint or run directory (`ddm.io.checkpoint`).

A name is a Hub id only when it can be one (`user/repo`, no `..`) and neither it nor its first path
component exists here: `runs/pyy`, a typo of `runs/py` next to a `runs/` folder, is a local path, and
fails at once with a `CheckpointError` instead of a network round trip. A new storage format is one reader
module in `ddm.io` and one branch here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ddm.errors import CheckpointError
from ddm.io import checkpoint, hub, sedd

__all__ = ["load"]


def _local(name_or_path: str | os.PathLike) -> Path:
    """The local path of a name that is not a Hub id, or a `CheckpointError` saying why it is missing."""
    path = Path(name_or_path)
    if path.exists():
        return path
    why = ""
    if isinstance(name_or_path, str) and "/" in name_or_path:
        first = Path(name_or_path.split("/", 1)[0])
        if first.exists():
            why = f" ({str(first)!r} exists here, so this is a local path, not a Hub id)"
        elif not hub.looks_like_repo_id(name_or_path):
            why = " (not a Hub id either: a Hub id is 'user/repo')"
    raise CheckpointError(f"no such file or directory {str(path)!r}{why}; check the path")


def load(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    ema: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """Loads a model from a Hub id or a local path, ready to sample (`ddm.load`).

    Args:
        name_or_path: a Hub id `"user/repo"` (resolved through the local Hugging Face cache), a
            directory written by `save_pretrained`, a ddm training checkpoint or run directory, or a
            SEDD checkpoint (directory or file).
        device: where the weights go (default CPU).
        ema: for a training checkpoint: the EMA weights (default) or the raw ones.
        revision: the Hub revision (branch, tag or commit) of a Hub id.
        cache_dir: the Hugging Face cache (default: huggingface_hub's, from `HF_HUB_CACHE` / `HF_HOME`).

    Returns:
        The model in eval mode, with `tokenizer` and `checkpoint_path` set.

    Raises:
        CheckpointError: a local path that does not exist (at once, without the network).
        FileNotFoundError: a Hub id not in the cache that cannot be downloaded (the message says how to
            get it; instant with `HF_HUB_OFFLINE=1`).
    """
    if hub.is_repo_id(name_or_path):
        path = hub.snapshot(str(name_or_path), revision=revision, cache_dir=cache_dir)
    else:
        path = _local(name_or_path)
    if hub.is_hub_dir(path):
        return hub.load_hub_dir(path, device)
    if sedd.is_sedd_checkpoint(path):
        return sedd.load_sedd(path, device=device, ema=ema)
    return checkpoint.load(path, device=device, ema=ema)
