"""Checkpoints: a directory of safetensors and JSON, written atomically; no pickle anywhere.

Layout of one checkpoint (DESIGN.md, "Trained models, checkpoints, tokenizers"):

    config.json            model, graph, schedule, tokenizer and training config
    model.safetensors      the raw (optimised) weights
    ema.safetensors        the EMA weights: what `load` returns
    optimizer.safetensors  the optimizer state, flattened to `"<param index>.<key>"` tensors
    state.json             step, RNG states (JSON-able), data position, EMA count, optimizer param groups

A training run keeps its checkpoints in `<run_dir>/checkpoints/step_XXXXXXXX/` and names the newest in
`<run_dir>/checkpoints/LATEST`. A save writes a temporary directory next to the final one, fsyncs every
file and the directory, renames it into place and only then rewrites `LATEST` (itself by temp file and
`os.replace`), so a process killed at any point of a save leaves the previous checkpoint and `LATEST`
intact.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ddm import _fs, graphs, schedules, tokenizers
from ddm._faults import maybe_fail
from ddm.model import ARModel, ModelConfig, ScoreModel

__all__ = [
    "FORMAT_VERSION",
    "latest",
    "load",
    "read_config",
    "read_training_state",
    "resolve",
    "rng_state",
    "save",
    "set_rng_state",
]

FORMAT_VERSION = 1
_LATEST = "LATEST"


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run directory, or None if it has none."""
    ckpts = Path(run_dir) / "checkpoints"
    pointer = ckpts / _LATEST
    if not pointer.is_file():
        return None
    path = ckpts / pointer.read_text().strip()
    return path if (path / "config.json").is_file() else None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint, its run directory or the run's `checkpoints/` folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for run_dir in (path, path.parent):
        found = latest(run_dir)
        if found is not None and (path == run_dir or path.name == "checkpoints"):
            return found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint directory nor a run directory with one")


# ---------------------------------------------------------------------------------------------------
# RNG states as JSON-able data
# ---------------------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The global torch (CPU and CUDA), NumPy and Python RNG states and the given generators, JSON-able."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we save)
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "generators": {name: _b64(g.get_state()) for name, g in (generators or {}).items()},
    }
    return out


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restores what `rng_state` saved (CUDA states only where CUDA is available)."""
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise ValueError(f"checkpoint has no state for the {name!r} generator")
        g.set_state(_unb64(state["generators"][name]))


# ---------------------------------------------------------------------------------------------------
# Optimizer state <-> flat tensors + JSON
# ---------------------------------------------------------------------------------------------------


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, st in sd["state"].items():
        for key, value in st.items():
            name = f"{index}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().contiguous().cpu()
            else:
                scalars[name] = value
    groups = json.loads(json.dumps(sd["param_groups"]))  # tuples -> lists; must be JSON-able
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------------
# Atomic directory writes
# ---------------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    ema: Any = None,
    optimizer: Any = None,
    state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Writes `<run_dir>/checkpoints/step_<step>/` atomically and points `LATEST` at it.

    Args:
        run_dir: the run directory.
        step: the optimizer step the checkpoint holds.
        model: the model (its raw weights go to `model.safetensors`).
        config: the JSON-able `config.json` content (model, graph, schedule, tokenizer, train).
        ema: an `ddm.model.EMA` (its weights go to `ema.safetensors`); without one the raw weights are
            also written as the EMA weights.
        optimizer: the optimizer whose state is saved (a `torch.optim.Optimizer`, or anything with its
            `state_dict()` layout, such as `ddm.training.optim.MuonAdamW`).
        state: extra JSON-able training state (RNG states, data position, ...) for `state.json`.
        keep: how many checkpoints to keep (older ones are deleted after the new one is in place).

    Returns:
        The checkpoint directory.
    """
    ckpts = Path(run_dir) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for stale in ckpts.glob(".tmp-*"):  # left behind by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:08d}"
    final = ckpts / name
    tmp = ckpts / f".tmp-{name}-{uuid.uuid4().hex}"
    tmp.mkdir()

    weights = _state_dict(model)
    save_file(weights, str(tmp / "model.safetensors"))
    ema_weights = {k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()} if ema else weights
    save_file(ema_weights, str(tmp / "ema.safetensors"))
    full_state: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": int(step), **(state or {})}
    full_state["ema_num_updates"] = int(ema.num_updates) if ema is not None else 0
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        full_state["optimizer"] = meta
    for f in tmp.glob("*.safetensors"):
        _fs.fsync_file(f)
    _write_json(tmp / "state.json", full_state)
    _write_json(tmp / "config.json", {"format_version": FORMAT_VERSION, **config})
    _fs.fsync_dir(tmp)
    maybe_fail("save", step)  # test hook: a process killed here leaves only the ignored temp directory

    if final.exists():  # an earlier run reached this step: move it aside, then replace it
        old = ckpts / f".tmp-old-{name}-{uuid.uuid4().hex}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fs.fsync_dir(ckpts)
    _fs.write_text(ckpts / _LATEST, name + "\n")

    steps = sorted(p for p in ckpts.glob("step_*") if p.is_dir() and p != final)
    for old in steps[: max(0, len(steps) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a checkpoint (or of the latest checkpoint of a run directory)."""
    path = resolve(path)
    with open(path / "config.json") as f:
        cfg = json.load(f)
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has format version {version!r}, expected {FORMAT_VERSION}"
        )
    return cfg


def read_training_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything needed to resume: `state.json` plus the `model`, `ema` and `optimizer` state dicts."""
    path = resolve(path)
    with open(path / "state.json") as f:
        state = json.load(f)
    state["model"] = load_file(str(path / "model.safetensors"), device=str(device))
    state["ema"] = load_file(str(path / "ema.safetensors"), device=str(device))
    if "optimizer" in state:
        tensors = load_file(str(path / "optimizer.safetensors"), device=str(device))
        state["optimizer"] = _unflatten_optimizer(tensors, state["optimizer"])
    state["path"] = path
    return state


def build_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """A fresh model (random weights) from a checkpoint's `config.json` content: a `ScoreModel`, or an
    `ARModel` when `objective` is `"autoregressive"`."""
    tokenizer = tokenizers.from_config(cfg["tokenizer"]) if cfg.get("tokenizer") else None
    if cfg.get("objective", "diffusion") == "autoregressive":
        if tokenizer is None:
            raise ValueError("an autoregressive checkpoint needs its tokenizer (the vocabulary size)")
        return ARModel(ModelConfig.from_dict(cfg["model"]), tokenizer.vocab_size, tokenizer=tokenizer)
    return ScoreModel(
        ModelConfig.from_dict(cfg["model"]),
        graphs.from_config(cfg["graph"]),
        schedules.from_config(cfg["schedule"]),
        tokenizer=tokenizer,
    )


def load(path: str | os.PathLike, *, device: str | torch.device | None = None, ema: bool = True):
    """Loads a trained `ScoreModel` in eval mode, with its tokenizer, without the training code.

    Args:
        path: a checkpoint directory, or a run directory (its latest checkpoint is used).
        device: where the weights go (default CPU).
        ema: load the EMA weights (default) or the raw optimised ones.

    Returns:
        The `ScoreModel` with `.tokenizer` set and `.checkpoint_path` naming the directory.
    """
    path = resolve(path)
    cfg = read_config(path)
    model = build_model(cfg)
    device = torch.device(device) if device is not None else torch.device("cpu")
    weights = load_file(str(path / ("ema.safetensors" if ema else "model.safetensors")), device=str(device))
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    model.checkpoint_path = path
    return model
