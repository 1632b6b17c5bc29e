"""Checkpoints: a directory of safetensors and JSON, written atomically; no pickle anywhere.

Layout of one checkpoint (DESIGN.md, "Trained models, checkpoints, tokenizers"):

    config.json            model, graph, schedule, tokenizer and training config
    model.safetensors      the raw (optimised) weights
    ema.safetensors        the EMA weights: what `load` returns
    optimizer.safetensors  the optimizer state, flattened to `"<param index>.<key>"` tensors
    state.json             step, RNG states (JSON-able), data position, EMA count, optimizer param groups

    manifest.json          the size and SHA-256 of every other file, written last (`ddm.io.run`)

A training run keeps its checkpoints in `<run_dir>/checkpoints/step_XXXXXXXX/` and names the newest in
`<run_dir>/checkpoints/LATEST`; `ddm.io.run` owns that layout. A save writes a temporary directory next to
the final one (each file fsynced, the manifest last), renames it into place and only then rewrites
`LATEST` (itself by temp file and `os.replace`), so a process killed at any point of a save leaves the
previous checkpoint and `LATEST` intact; a save that fails (a full disk, a read-only directory) removes
its temporary directory and raises an `OSError` that says what to do. Files get the user's umask.

Reading verifies the files it reads against the manifest: a damaged file is a `CheckpointError` naming
it and the previous checkpoint. Checkpoints written before manifests load with a warning.
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
import safetensors.torch
import torch
from safetensors import SafetensorError

from ddm import _fs, graphs, schedules, tokenizers
from ddm._device import resolve_device
from ddm._faults import maybe_fail
from ddm.errors import CheckpointError
from ddm.io import run
from ddm.model import ARModel, ModelConfig, ScoreModel

__all__ = [
    "FORMAT_VERSION",
    "build_model",
    "latest",
    "load",
    "load_weights",
    "read_config",
    "read_json",
    "read_training_state",
    "resolve",
    "rng_state",
    "save",
    "set_rng_state",
    "write_safetensors",
]

FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint of a run directory, or None if it has none (`run.latest_intact`:
    when the one `LATEST` names is missing or damaged, warns and falls back to an earlier one)."""
    return run.latest_intact(run_dir)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint, its run directory or the run's `checkpoints/` folder.

    A run directory gives the checkpoint its `LATEST` names (unverified: loading verifies what it reads).

    Raises:
        FileNotFoundError: `path` does not exist, or holds no checkpoint.
        CheckpointError: `LATEST` names a checkpoint that does not exist (the message lists those that do).
    """
    path = Path(path)
    if run.checkpoint_kind(path) is not None or (path / "config.json").is_file():
        return path
    for run_dir in (path, path.parent):
        if path == run_dir or path.name == run.CHECKPOINTS:
            found = run.latest(run_dir)
            if found is not None:
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


def _state_dict(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode("utf-8")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Writes `tensors` as a safetensors file at `path` (fsynced, with the user's umask).

    Returns:
        The file's manifest entry (size and SHA-256), computed from the bytes written.

    Raises:
        OSError: the write failed (a full disk, no permission); it names `path`.
    """
    data = safetensors.torch.save(tensors)
    _fs.write_file(path, data)
    return run.manifest_entry(data)


def _write_files(tmp: Path, step: int, model: torch.nn.Module, config: dict[str, Any], extra: dict) -> None:
    """Writes the files of one checkpoint into `tmp`, the manifest last; `extra` holds `ema`,
    `optimizer` and `state` as `save` takes them."""
    ema, optimizer = extra["ema"], extra["optimizer"]
    files: dict[str, dict[str, Any]] = {}
    weights = _state_dict(model)
    files["model.safetensors"] = write_safetensors(tmp / "model.safetensors", weights)
    ema_weights = _state_dict(ema) if ema else weights
    files["ema.safetensors"] = write_safetensors(tmp / "ema.safetensors", ema_weights)
    full_state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        **(extra["state"] or {}),
    }
    full_state["ema_num_updates"] = int(ema.num_updates) if ema is not None else 0
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        files["optimizer.safetensors"] = write_safetensors(tmp / "optimizer.safetensors", tensors)
        full_state["optimizer"] = meta
    for name, obj in (
        ("state.json", full_state),
        ("config.json", {"format_version": FORMAT_VERSION, **config}),
    ):
        data = _json_bytes(obj)
        _fs.write_file(tmp / name, data)
        files[name] = run.manifest_entry(data)
    run.write_manifest(tmp, files, format_version=FORMAT_VERSION, step=int(step))
    _fs.fsync_dir(tmp)


def _save_error(e: OSError, final: Path, before: Path | None) -> OSError:
    """The `OSError` of a failed save: the checkpoint, what went wrong, what to do, what is left."""
    kept = f"; the previous checkpoint {before} is intact" if before is not None else ""
    message = f"cannot save checkpoint {final}: {_fs.describe_os_error(e)}{kept}"
    return type(e)(e.errno, message) if e.errno is not None else type(e)(message)


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

    Raises:
        OSError: a write failed (ENOSPC, EROFS, EACCES, ...): the message names the checkpoint, says what
            to do and that the previous checkpoint is intact; the temporary directory is removed.
    """
    ckpts = run.checkpoints_dir(run_dir)
    final = run.step_dir(run_dir, step)
    name = final.name
    tmp = ckpts / f".tmp-{name}-{uuid.uuid4().hex}"
    try:
        before = run.latest(run_dir)  # named in the error of a failed save
    except CheckpointError:
        before = None
    try:
        ckpts.mkdir(parents=True, exist_ok=True)
        for stale in ckpts.glob(".tmp-*"):  # left behind by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, step, model, config, {"ema": ema, "optimizer": optimizer, "state": state})
        maybe_fail("save", step)  # test hook: a process killed here leaves only the ignored temp directory
        if final.exists():  # an earlier run reached this step: move it aside, then replace it
            old = ckpts / f".tmp-old-{name}-{uuid.uuid4().hex}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fs.fsync_dir(ckpts)
        _fs.write_text(ckpts / run.LATEST, name + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _save_error(e, final, before) from e
        raise

    old_steps = sorted(p for p in ckpts.glob("step_*") if p.is_dir() and p != final)
    for old in old_steps[: max(0, len(old_steps) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def read_json(file: str | os.PathLike) -> Any:
    """A JSON file of a checkpoint or model directory.

    Raises:
        CheckpointError: the file is missing, or not valid JSON (half-written or edited); the message names
            it and the previous checkpoint of the run.
    """
    file = Path(file)
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise run.damaged(file.parent, file.name, "missing") from None
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise run.damaged(file.parent, file.name, f"not valid JSON, half-written or edited? ({e})") from e


def load_weights(file: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no pickle).

    Raises:
        CheckpointError: the file is missing, truncated, empty or not safetensors; the message names it.
    """
    file = Path(file)
    try:
        return safetensors.torch.load_file(str(file), device=str(device))
    except FileNotFoundError:
        raise run.damaged(file.parent, file.name, "missing") from None
    except SafetensorError as e:
        raise run.damaged(file.parent, file.name, f"not a complete safetensors file ({e})") from e


def _verify(path: Path, names: list[str] | None) -> None:
    """Verifies the files `names` (None: all) of a checkpoint; a directory that is no checkpoint (a
    `save_pretrained` folder) has nothing to verify."""
    if run.checkpoint_kind(path) is not None:
        run.verify(path, names)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a checkpoint (or of the latest checkpoint of a run directory), verified."""
    path = resolve(path)
    _verify(path, ["config.json"])
    cfg = read_json(path / "config.json")
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / 'config.json'} has format version {version!r}, expected {FORMAT_VERSION}"
        )
    return cfg


def read_training_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything needed to resume: `state.json` plus the `model`, `ema` and `optimizer` state dicts,
    every file verified against the manifest."""
    path = resolve(path)
    _verify(path, None)
    state = read_json(path / "state.json")
    state["model"] = load_weights(path / "model.safetensors", device)
    state["ema"] = load_weights(path / "ema.safetensors", device)
    if "optimizer" in state:
        tensors = load_weights(path / "optimizer.safetensors", device)
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
        path: a checkpoint directory, or a run directory (the checkpoint its `LATEST` names is used).
        device: where the weights go (default CPU; `"auto"`: CUDA when available).
        ema: load the EMA weights (default) or the raw optimised ones.

    Returns:
        The `ScoreModel` with `.tokenizer` set and `.checkpoint_path` naming the directory.

    Raises:
        CheckpointError: a file it reads is missing or damaged (the message names it and the previous
            checkpoint of the run).
    """
    path = resolve(path)
    if (path / "sharded").is_dir():  # ddm.io.sharded (imports this module): DCP shards, no safetensors
        raise CheckpointError(
            f"{str(path)!r} is a sharded (DCP) checkpoint: write its plain checkpoint with "
            f"`ddm export {path} OUT` (ddm.io.sharded.export) and load that"
        )
    weights_name = "ema.safetensors" if ema else "model.safetensors"
    _verify(path, ["config.json", weights_name])
    cfg = read_config(path)
    model = build_model(cfg)
    device = resolve_device(device) if device is not None else torch.device("cpu")
    model.load_state_dict(load_weights(path / weights_name, device), strict=True)
    model.to(device).eval()
    model.checkpoint_path = path
    return model
