"""Sharded checkpoints through `torch.distributed.checkpoint` (DCP): every rank writes its own shard.

Layout of `checkpoints/step_XXXXXXXX/` (config `checkpoint_format = "sharded"`):

    config.json, state.json   as in a plain checkpoint (`ddm.io.checkpoint`), written by rank 0
    sharded/                  DCP's files: `.metadata` and one `__<rank>_0.distcp` per writing rank
    manifest.json             size and SHA-256 of every file above, written last by rank 0

The DCP state holds `model` (parameter names), `ema` (same names) and `optimizer` (torch's
`get_optimizer_state_dict` layout, keyed by parameter name, so it does not depend on how the optimizer
numbers its parameters). Tensors may be DTensors (FSDP: each rank writes its shard) or plain tensors (DDP
or one process: one copy is written): DCP reshards on load, so a run resumes at any world size and with
either parallelism, or with a plain checkpoint next.

Atomic as a plain save: the files go to `.tmp-step_XXXXXXXX-sharded/` (a name every rank derives), the
manifest is written after every rank's shard is on disk, the directory is renamed into place and `LATEST`
names it last; a save killed before that leaves a temporary directory that resume ignores and the next save
removes. A missing or damaged shard is a `CheckpointError` naming it (`ddm.io.run.verify`). With several
machines, the run directory must be on a filesystem they share.

`export` turns a sharded checkpoint into the plain safetensors checkpoint that `ddm.load`, sampling, the Hub
and lm-eval read (`ddm export`), in one process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from ddm import _fs
from ddm._faults import maybe_fail
from ddm.errors import CheckpointError
from ddm.io import checkpoint as ckpt
from ddm.io import run

__all__ = ["SHARDS", "PendingSave", "export", "is_sharded", "load_into", "read_state", "save", "save_async"]

SHARDS = "sharded"  # the DCP directory inside a checkpoint


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether a checkpoint directory is a sharded one."""
    return (Path(path) / SHARDS).is_dir()


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    return list(getattr(optimizer, "_parts", (optimizer,)))  # ddm.training.optim.MuonAdamW holds two


def _state(model: torch.nn.Module, ema: Any, optimizer: Any) -> dict[str, Any]:
    return {
        "model": get_model_state_dict(model),
        "ema": dict(ema.shadow),
        "optimizer": get_optimizer_state_dict(model, _optimizers(optimizer)),
    }


@contextlib.contextmanager
def _one_process_is_fine():
    """DCP warns that it assumes one process when there is no process group: that is meant here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


_ASYNC_GROUP: dict[Any, Any] = {}  # the default group -> the background writer's group


def _async_group() -> Any:
    """A gloo group of its own for the background writer: its collectives must not interleave with the
    training step's on the main group (they did: gloo pairs timed out). Made once per default group, by
    every rank."""
    if not dist.is_initialized():
        return None
    world = dist.group.WORLD
    if world not in _ASYNC_GROUP:
        _ASYNC_GROUP.clear()
        _ASYNC_GROUP[world] = dist.new_group(backend="gloo")
    return _ASYNC_GROUP[world]


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    ema: Any,
    optimizer: Any,
    config: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Writes a sharded checkpoint of `step` (collective: every rank calls it); returns its directory.

    Args mirror `ddm.io.checkpoint.save`; `state` is the extra JSON of `state.json` (rank 0's is
    written)."""
    return _begin(run_dir, step, (model, ema, optimizer), config, state, keep, asynchronous=False).wait()


def save_async(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    ema: Any,
    optimizer: Any,
    config: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> PendingSave:
    """`save` in the background (`torch.distributed.checkpoint.async_save`): the tensors are staged to
    CPU memory before it returns, a thread writes them while training goes on, and `PendingSave.wait`
    (collective, before the next save and at the end of the run) makes the checkpoint the latest."""
    return _begin(run_dir, step, (model, ema, optimizer), config, state, keep, asynchronous=True)


class PendingSave:
    """A sharded save whose shards are being written; `wait` completes it (every rank calls it)."""

    def __init__(self, future: Any, tmp: Path, final: Path, finish: tuple[Any, ...]) -> None:
        self.future, self.tmp, self.final, self._finish = future, tmp, final, finish

    def wait(self) -> Path:
        """Waits for this rank's shards, then (rank 0) writes the manifest, renames and points `LATEST`."""
        if self.future is not None:
            self.future.result()
        _barrier()  # every rank's shards are on disk
        if _rank() == 0:
            _finish(self.tmp, self.final, *self._finish)
        _barrier()
        return self.final


def _begin(
    run_dir: str | os.PathLike,
    step: int,
    objects: tuple[Any, Any, Any],
    config: dict[str, Any],
    state: dict[str, Any],
    keep: int,
    *,
    asynchronous: bool,
) -> PendingSave:
    ckpts = run.checkpoints_dir(run_dir)
    final = run.step_dir(run_dir, step)
    tmp = ckpts / f".tmp-{final.name}-sharded"
    if _rank() == 0:
        ckpts.mkdir(parents=True, exist_ok=True)
        for stale in ckpts.glob(".tmp-*"):  # left behind by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    model, ema, optimizer = objects
    tensors = _state(model, ema, optimizer)
    future = None
    with _one_process_is_fine():
        if asynchronous:
            future = dcp.async_save(tensors, checkpoint_id=str(tmp / SHARDS), process_group=_async_group())
        else:
            dcp.save(tensors, checkpoint_id=str(tmp / SHARDS))
    extra = {**state, "ema_num_updates": int(ema.num_updates)}
    return PendingSave(future, tmp, final, (step, config, extra, keep))


def _finish(
    tmp: Path, final: Path, step: int, config: dict[str, Any], state: dict[str, Any], keep: int
) -> None:
    """Rank 0: the JSON files and the manifest into `tmp`, then `tmp` renamed to `final` and `LATEST`."""
    files: dict[str, dict[str, Any]] = {}
    for name, obj in (
        ("state.json", {"format_version": ckpt.FORMAT_VERSION, "step": int(step), **state}),
        ("config.json", {"format_version": ckpt.FORMAT_VERSION, **config}),
    ):
        data = ckpt._json_bytes(obj)
        _fs.write_file(tmp / name, data)
        files[name] = run.manifest_entry(data)
    for file in sorted((tmp / SHARDS).iterdir()):
        files[f"{SHARDS}/{file.name}"] = {"size": file.stat().st_size, "sha256": _fs.sha256_file(file)}
    _fs.fsync_dir(tmp / SHARDS)
    maybe_fail("save", step)  # test hook: killed here, only the ignored temporary directory is left
    run.write_manifest(tmp, files, format_version=ckpt.FORMAT_VERSION, step=int(step), sharded=True)
    _fs.fsync_dir(tmp)
    ckpts = final.parent
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fs.fsync_dir(ckpts)
    _fs.write_text(ckpts / run.LATEST, final.name + "\n")
    old = sorted(p for p in ckpts.glob("step_*") if p.is_dir() and p != final)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """`state.json` of a sharded checkpoint, every file (each shard) verified against the manifest."""
    path = Path(path)
    run.verify(path)
    state = ckpt.read_json(path / "state.json")
    state["path"], state["sharded"] = path, True
    return state


def load_into(state: dict[str, Any], model: torch.nn.Module, ema: Any, optimizer: Any) -> None:
    """Reads the sharded checkpoint of `state` (`read_state`) into the model, the EMA and the optimizer
    as they are placed now (any world size; DTensors or plain tensors). Collective under a process group."""
    path = Path(state["path"])
    sd = _state(model, ema, optimizer)  # initialises an empty optimizer's state (a zero-lr step)
    try:
        with _one_process_is_fine():
            dcp.load(sd, checkpoint_id=str(path / SHARDS))
    except Exception as e:  # DCP wraps the rank's error: say which checkpoint, keep the cause
        raise CheckpointError(f"cannot read the sharded checkpoint {str(path)!r}: {e}") from e
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, _optimizers(optimizer), sd["optimizer"])
    with torch.no_grad():
        for name, t in sd["ema"].items():
            if t is not ema.shadow[name]:
                ema.shadow[name].copy_(t)
    ema.num_updates = int(state["ema_num_updates"])


def _plain_optimizer(opt_sd: dict[str, Any]) -> dict[str, Any]:
    """torch's name-keyed optimizer state -> the index-keyed layout of a plain checkpoint: parameters
    numbered in the order of the groups (Muon's then AdamW's, as `MuonAdamW.state_dict` does)."""
    index = {n: i for i, n in enumerate(n for g in opt_sd["param_groups"] for n in g["params"])}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in opt_sd["param_groups"]]
    return {"state": {index[n]: st for n, st in opt_sd["state"].items()}, "param_groups": groups}


class _Tensors:
    def __init__(self, sd: dict[str, Any], num_updates: int = 0) -> None:
        self._sd, self.num_updates = sd, num_updates

    def state_dict(self) -> dict[str, Any]:
        return self._sd


def export(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Writes the plain checkpoint (safetensors, `ddm.load` reads it) of the sharded checkpoint `path`
    into the new directory `out`, atomically; returns `out`."""
    path, out = Path(path), Path(out)
    if not is_sharded(path):
        raise CheckpointError(f"{str(path)!r} is not a sharded checkpoint (no {SHARDS}/ directory)")
    if out.exists():
        raise FileExistsError(f"export: {str(out)!r} already exists; choose a new directory")
    state = read_state(path)
    config = ckpt.read_config(path)
    with _one_process_is_fine():
        full = _load_state_dict_from_keys(checkpoint_id=str(path / SHARDS))
    extra = {k: v for k, v in state.items() if k not in ("path", "sharded", "format_version", "step")}
    optimizer = full.get("optimizer")
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ckpt._write_files(
        tmp,
        state["step"],
        _Tensors(full["model"]),
        {k: v for k, v in config.items() if k != "format_version"},
        {
            "ema": _Tensors(full["ema"], state.get("ema_num_updates", 0)),
            "optimizer": _Tensors(_plain_optimizer(optimizer)) if optimizer else None,
            "state": extra,
        },
    )
    os.rename(tmp, out)
    return out
