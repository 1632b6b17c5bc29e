# ruff: noqa: E501  (the tables keep one case per line)
"""Bad input, one table: damaged checkpoint files, failing writes and bad command-line arguments.

Each case is one line. `FILE_CASES`: (damage applied to a copy of a two-checkpoint run, what is then
done with the run, the exception, a pattern its message matches). `CLI_CASES`: (`ddm` arguments with
`{run}` for that run, a damage, the exit status, a pattern of the `ddm <cmd>: error: ...` line).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import ddm
import pytest
import torch
from _tiny import tiny_run
from ddm import _fs
from ddm.cli import main
from ddm.errors import CheckpointError
from ddm.io import checkpoint, run
from ddm.training import train

PREV = "step_00000002"  # the previous checkpoint, which every damage message offers
LAST = "step_00000004"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bad") / "run"
    train(tiny_run(run_dir, steps=4, save_every=2, keep_checkpoints=2))
    assert run.steps(run_dir) == [2, 4]
    return run_dir


@pytest.fixture
def run_dir(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


# ---------------------------------------------------------------------------------------------------
# Damages: each takes the run directory (and pytest's monkeypatch) and breaks one thing
# ---------------------------------------------------------------------------------------------------


def _last(r):
    return r / "checkpoints" / LAST


def flip(name):
    def damage(r, mp):
        f = _last(r) / name
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different bytes
        f.write_bytes(bytes(data))

    return damage


def truncate(name, keep=0.5):
    def damage(r, mp):
        f = _last(r) / name
        f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])

    return damage


def remove(name):
    return lambda r, mp: (_last(r) / name).unlink()


def legacy(then=None):
    """Removes the manifests (a run written before them), then applies `then` to the latest checkpoint."""

    def damage(r, mp):
        for p in r.glob("checkpoints/step_*/manifest.json"):
            p.unlink()
        if then is not None:
            then(r, mp)

    return damage


def latest_names(step_name):
    return lambda r, mp: (r / "checkpoints" / "LATEST").write_text(step_name + "\n")


def failing_write(code):
    """Every file `_fs` writes fails with `code` half-way through (a full disk, a read-only file system)."""
    real_open = open

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Failing(f) if "w" in mode else f

    return lambda r, mp: mp.setattr(_fs, "open", fake_open, raising=False)


def failing_mkdir(code):
    """Creating a directory fails with `code` (a read-only run directory)."""

    def mkdir(self, *a, **k):
        raise OSError(code, os.strerror(code), str(self))

    return lambda r, mp: mp.setattr(Path, "mkdir", mkdir)


def pretrained_truncated(r, mp):
    """A `save_pretrained` folder of the latest checkpoint (in `r / "hub"`) whose weights are cut short."""
    checkpoint.load(r).save_pretrained(r / "hub")
    f = r / "hub" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def nothing(r, mp):
    pass


# ---------------------------------------------------------------------------------------------------
# Actions on the damaged run
# ---------------------------------------------------------------------------------------------------


def load(r):
    return checkpoint.load(r)


def load_raw(r):
    return checkpoint.load(r, ema=False)


def load_pretrained(r):
    return ddm.load(r / "hub")


def resume_state(r):
    return checkpoint.read_training_state(r)


def save_step_6(r):
    state = checkpoint.read_training_state(r / "checkpoints" / LAST)
    model = checkpoint.build_model(checkpoint.read_config(r / "checkpoints" / LAST))
    model.load_state_dict(state["model"])
    return checkpoint.save(r, 6, model=model, config={"train": {}}, state={})


FILE_CASES = [
    # damage                               action        exception        message pattern
    (flip("ema.safetensors"),              load,         CheckpointError, rf"ema.safetensors: its SHA-256 .*{PREV}"),
    (flip("model.safetensors"),            load_raw,     CheckpointError, rf"model.safetensors: its SHA-256 .*{PREV}"),
    (flip("model.safetensors"),            resume_state, CheckpointError, r"model.safetensors: its SHA-256"),
    (flip("optimizer.safetensors"),        resume_state, CheckpointError, r"optimizer.safetensors: its SHA-256"),
    (flip("state.json"),                   resume_state, CheckpointError, r"state.json: its SHA-256"),
    (remove("ema.safetensors"),            load,         CheckpointError, rf"ema.safetensors: missing, though .*{PREV}"),
    (truncate("ema.safetensors"),          load,         CheckpointError, r"ema.safetensors: \d+ bytes where"),
    (truncate("config.json"),              load,         CheckpointError, r"config.json: \d+ bytes where"),
    (truncate("manifest.json"),            load,         CheckpointError, r"manifest.json: it is not a valid manifest"),
    (legacy(truncate("ema.safetensors")),  load,         CheckpointError, rf"ema.safetensors: not a complete safetensors.*{PREV}"),
    (legacy(truncate("ema.safetensors", 0)), load,       CheckpointError, r"ema.safetensors: not a complete safetensors"),
    (legacy(truncate("config.json")),      load,         CheckpointError, r"config.json: not valid JSON"),
    (legacy(remove("ema.safetensors")),    load,         CheckpointError, r"ema.safetensors: missing"),
    (pretrained_truncated,                 load_pretrained, CheckpointError, r"model.safetensors: not a complete safetensors"),
    (latest_names("step_00000009"),        load,         CheckpointError, rf"names step_00000009.*{PREV}, {LAST}"),
    (failing_write(errno.ENOSPC),          save_step_6,  OSError,         r"cannot save checkpoint .*step_00000006.*the disk is full"),
    (failing_write(errno.EROFS),           save_step_6,  OSError,         r"cannot save checkpoint .*read-only.*choose a writable"),
    (failing_mkdir(errno.EROFS),           save_step_6,  OSError,         r"cannot save checkpoint .*Read-only file system \(the file system is read-only"),
    (failing_write(errno.EACCES),          save_step_6,  OSError,         r"permission denied"),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:checkpoint .* has no manifest.json")
@pytest.mark.parametrize(("damage", "action", "exc", "pattern"), FILE_CASES)
def test_damaged_files_and_failing_writes(run_dir, monkeypatch, damage, action, exc, pattern):
    damage(run_dir, monkeypatch)
    with pytest.raises(exc, match=pattern):
        action(run_dir)
    monkeypatch.undo()
    # nothing is left behind, and the checkpoints are as they were
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert run.steps(run_dir) == [2, 4]


CLI_CASES = [
    # argv                                                       damage                         code  pattern
    (["eval", "--checkpoint", "{run}", "--seq-len", "0"],         nothing,                       2,    r"--seq-len: must be a positive integer, got 0"),
    (["eval", "--checkpoint", "{run}", "--seq-len", "-4"],        nothing,                       2,    r"--seq-len: must be a positive integer, got -4"),
    (["eval", "--checkpoint", "{run}", "--device", "cuda"],       nothing,                       2,    r"ddm eval: error: device 'cuda' .* CUDA is not available"),
    (["sample", "--checkpoint", "{run}", "--device", "cuda"],     nothing,                       2,    r"ddm sample: error: device 'cuda' .* CUDA is not available"),
    (["train", "--run-dir", "{run}", "--resume", "--device", "cuda"], nothing,                   2,    r"ddm train: error: device 'cuda' .* CUDA is not available"),
    (["sample", "--checkpoint", "{run}", "--device", "tpu9"],     nothing,                       2,    r"ddm sample: error: device 'tpu9' is not a device name"),
    (["sample", "--checkpoint", "{run}", "--no-progress"],        flip("ema.safetensors"),       2,    rf"ddm sample: error: .*ema.safetensors: its SHA-256 .*{PREV}"),
    (["sample", "--checkpoint", "{run}", "--no-progress"],        remove("ema.safetensors"),     2,    rf"ddm sample: error: .*ema.safetensors: missing, though .*{PREV}"),
    (["eval", "--checkpoint", "{run}"],                           legacy(truncate("config.json")), 2,  r"ddm eval: error: .*config.json: not valid JSON"),
    (["sample", "--checkpoint", "{run}", "--no-progress"],        latest_names("step_00000009"), 2,    rf"ddm sample: error: .*{PREV}, {LAST}"),
    (["train", "--run-dir", "{run}", "--resume", "--steps", "6"], failing_write(errno.ENOSPC),   2,    r"ddm train: error: cannot save .*step_00000006.*the disk is full.*step_00000004 is intact"),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:checkpoint .* has no manifest.json")
@pytest.mark.parametrize(("argv", "damage", "code", "pattern"), CLI_CASES)
def test_command_line_errors(run_dir, monkeypatch, capsys, argv, damage, code, pattern):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    damage(run_dir, monkeypatch)
    argv = [a.format(run=run_dir) for a in argv]
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    assert status == code, err
    assert len(err.strip().splitlines()) >= 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
