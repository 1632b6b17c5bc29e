"""A run directory and the checkpoints in it: which exist, which is the latest, which are intact.

Layout of a run directory (what training writes, and what the Hub card and the report read):

    checkpoints/step_XXXXXXXX/   one checkpoint per saved step (`ddm.io.checkpoint` writes its files)
    checkpoints/LATEST           the name of the newest complete checkpoint
    log.jsonl                    one JSON object per log line (training loss, held-out estimates)

A checkpoint is recognised by its manifest (`manifest.json`): the size and SHA-256 of every other file in
it, written last inside the atomic save. `verify` checks the files against it, so a damaged or missing
file is a `CheckpointError` that names the file and offers the previous checkpoint of the run. A directory
with `config.json`, `model.safetensors` and `state.json` but no manifest is a checkpoint written before
manifests existed (a legacy checkpoint): it loads, with a warning once per directory, unverified. Any
other directory is not a checkpoint (for example a `save_pretrained` folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from ddm import _fs
from ddm.errors import CheckpointError

__all__ = [
    "CHECKPOINTS",
    "LATEST",
    "LOG",
    "MANIFEST",
    "checkpoint_kind",
    "checkpoints_dir",
    "damaged",
    "latest",
    "latest_intact",
    "log_path",
    "manifest_entry",
    "previous",
    "read_manifest",
    "run_dir_of",
    "step_dir",
    "step_of",
    "steps",
    "verify",
    "write_manifest",
]

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
LOG = "log.jsonl"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The files without which a directory with no manifest is not a (legacy) training checkpoint.
_LEGACY_FILES = ("config.json", "model.safetensors", "state.json")
_STEP = re.compile(r"^step_(\d+)$")

# Files whose digest matched, by (path, inode, size, mtime, ctime): a checkpoint is hashed once per
# process even though resuming reads it several times.
_verified: set[tuple[str, int, int, int, int]] = set()
_warned_legacy: set[str] = set()


# ---------------------------------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------------------------------


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    """`<run_dir>/checkpoints`."""
    return Path(run_dir) / CHECKPOINTS


def log_path(run_dir: str | os.PathLike) -> Path:
    """`<run_dir>/log.jsonl`, the training log (it may not exist)."""
    return Path(run_dir) / LOG


def run_dir_of(checkpoint: str | os.PathLike) -> Path | None:
    """The run directory of a `<run_dir>/checkpoints/step_XXXXXXXX` checkpoint, or None for a checkpoint
    outside a run (a copied or downloaded one)."""
    path = Path(checkpoint)
    if step_of(path) is None or path.parent.name != CHECKPOINTS:
        return None
    return path.parent.parent


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """`<run_dir>/checkpoints/step_<step, 8 digits>`, the directory of the checkpoint of `step`."""
    return checkpoints_dir(run_dir) / f"step_{int(step):08d}"


def step_of(path: str | os.PathLike) -> int | None:
    """The step of a `step_XXXXXXXX` checkpoint directory, or None for another name."""
    m = _STEP.match(Path(path).name)
    return int(m.group(1)) if m else None


def steps(run_dir: str | os.PathLike) -> list[int]:
    """The steps that have a checkpoint directory in the run (intact or not), in increasing order."""
    ckpts = checkpoints_dir(run_dir)
    if not ckpts.is_dir():
        return []
    found = (step_of(p) for p in ckpts.iterdir() if p.is_dir())
    return sorted(s for s in found if s is not None)


def _pointer(run_dir: Path) -> Path | None:
    """The checkpoint directory that `LATEST` names (it may be missing), or None without `LATEST`."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pointer}: cannot read the LATEST pointer ({e})") from e
    return checkpoints_dir(run_dir) / name


def _listing(run_dir: Path) -> str:
    found = steps(run_dir)
    return ", ".join(f"step_{s:08d}" for s in found) if found else "none"


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint that `LATEST` names, unverified; None for a run without checkpoints.

    Without `LATEST` (a run whose first save was interrupted before it), the newest checkpoint directory.

    Raises:
        CheckpointError: `LATEST` names a checkpoint that does not exist (the message lists those that do).
    """
    run_dir = Path(run_dir)
    target = _pointer(run_dir)
    if target is None:
        found = steps(run_dir)
        return step_dir(run_dir, found[-1]) if found else None
    if checkpoint_kind(target) is None:
        raise CheckpointError(
            f"{checkpoints_dir(run_dir) / LATEST} names {target.name}, which is not a checkpoint directory "
            f"(the checkpoints of {str(run_dir)!r}: {_listing(run_dir)}); pass one of them by its path"
        )
    return target


def latest_intact(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of the run whose files match its manifest; None for a run without one.

    When `LATEST` names a missing or damaged checkpoint, warns (naming it and what is wrong) and falls back
    to the newest intact one, so that a resume continues from the last good state.
    """
    run_dir = Path(run_dir)
    try:
        target = latest(run_dir)
        if target is None:
            return None
        verify(target)
        return target
    except CheckpointError as e:
        problem = str(e)
    for step in reversed(steps(run_dir)):
        candidate = step_dir(run_dir, step)
        try:
            verify(candidate)
        except CheckpointError:
            continue
        warnings.warn(f"{problem}; using the newest intact checkpoint, {candidate}", stacklevel=2)
        return candidate
    raise CheckpointError(f"{problem}; the run {str(run_dir)!r} has no intact checkpoint to fall back to")


def previous(path: str | os.PathLike) -> Path | None:
    """The newest checkpoint directory of the same run before `path` (by step, unverified), or None."""
    path = Path(path)
    run_dir = run_dir_of(path)
    if run_dir is None:
        return None
    earlier = [s for s in steps(run_dir) if s < step_of(path)]
    return step_dir(run_dir, earlier[-1]) if earlier else None


# ---------------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------------


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """`"manifest"` for a checkpoint with a manifest, `"legacy"` for one written before manifests
    (`config.json`, `model.safetensors` and `state.json`, no manifest), None for any other path."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return "manifest"
    if all((path / name).is_file() for name in _LEGACY_FILES):
        return "legacy"
    return None


def manifest_entry(data: bytes) -> dict[str, Any]:
    """The manifest entry of a file with contents `data`: its size and SHA-256."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(directory: str | os.PathLike, files: dict[str, dict[str, Any]], **info: Any) -> None:
    """Writes `manifest.json` into a checkpoint directory being saved (call it after the other files).

    Args:
        directory: the (temporary) checkpoint directory.
        files: file name -> `manifest_entry` of its contents, for every other file in the directory.
        **info: JSON-able facts stored beside the files (the step, the format version).
    """
    manifest = {"manifest_version": MANIFEST_VERSION, **info, "files": files}
    _fs.write_file(Path(directory) / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a checkpoint directory, or None when it has none (a legacy checkpoint)."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not all(isinstance(e, dict) and {"size", "sha256"} <= set(e) for e in files.values()):
            raise ValueError("an entry lacks its size or sha256")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise damaged(Path(path), MANIFEST, f"it is not a valid manifest ({e})") from e
    return manifest


def damaged(path: str | os.PathLike, name: str, what: str) -> CheckpointError:
    """The `CheckpointError` for a damaged file `name` of the checkpoint `path`: names the file, what is
    wrong, and the previous checkpoint of the run (or that there is none)."""
    path = Path(path)
    prev = previous(path)
    if prev is not None:
        offer = (
            f"the previous checkpoint is {prev}: load it by its path (resuming falls back to it by itself)"
        )
    elif step_of(path) is not None:
        offer = "the run has no earlier checkpoint: restore the file from a copy, or train again"
    else:
        offer = "restore the file from a copy"
    return CheckpointError(f"checkpoint {str(path)!r} is damaged: {path / name}: {what}; {offer}")


def _stat_key(file: Path) -> tuple[str, int, int, int, int]:
    st = file.stat()
    return (str(file.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify(path: str | os.PathLike, names: tuple[str, ...] | list[str] | None = None) -> None:
    """Checks a checkpoint directory against its manifest.

    Every file the manifest lists must exist with its size; the files in `names` (default: all of them)
    must also have its SHA-256. A legacy checkpoint (no manifest) is checked for its required files only,
    with a warning once per directory.

    Raises:
        CheckpointError: a file is missing, of the wrong size or of the wrong digest, or `path` is not a
            checkpoint; the message names the file and the previous checkpoint of the run.
    """
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind is None:
        missing = [n for n in _LEGACY_FILES if not (path / n).is_file()]
        raise damaged(
            path, missing[0] if missing else MANIFEST, "missing (no manifest and no checkpoint files)"
        )
    if kind == "legacy":
        if str(path) not in _warned_legacy:
            _warned_legacy.add(str(path))
            warnings.warn(
                f"checkpoint {str(path)!r} has no {MANIFEST} (written by an older ddm): its files are not "
                "verified; save it again to add one",
                stacklevel=2,
            )
        return
    files = read_manifest(path)["files"]  # type: ignore[index]
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise damaged(path, name, "missing, though the manifest lists it")
        size = file.stat().st_size
        if size != entry["size"]:
            raise damaged(path, name, f"{size} bytes where the manifest says {entry['size']} (truncated?)")
    for name in files if names is None else names:
        if name not in files:
            raise damaged(path, name, "not listed in the manifest")
        file = path / name
        key = _stat_key(file)
        if key in _verified:
            continue
        if _fs.sha256_file(file) != files[name]["sha256"]:
            raise damaged(path, name, "its SHA-256 differs from the manifest's (the bytes changed)")
        _verified.add(key)
