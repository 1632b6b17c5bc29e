"""The command line: `ddm train` then `ddm eval --json`, resume from the run's own config, the error
boundary (one line per error, `--traceback`), the device rule and the memory check.

Bad arguments and damaged files, case by case, are in `test_bad_input.py`."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddm import _device
from ddm._device import available_bytes, check_memory, estimate_bytes, resolve_device
from ddm.cli import SUBCOMMANDS, Subcommand, main
from ddm.errors import DivergenceError, InvalidArgument
from ddm.io import checkpoint
from safetensors import SafetensorError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "tiny.toml"
    cfg.write_text(
        f'run_dir = "{d / "run"}"\n'
        "[model]\nhidden = 32\nheads = 2\nblocks = 1\ncond_dim = 16\nseq_len = 16\n"
        "[optim]\nbatch_size = 4\nsteps = 5\nwarmup_steps = 1\n"
        "[log]\neval_every = 0\nsave_every = 2\nprogress = false\nplot = false\n"
    )
    return d, cfg


def test_train_then_eval_json(run_dir, capsys):
    d, cfg = run_dir
    assert main(["train", "--config", str(cfg), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("checkpoint: " + str(d / "run" / "checkpoints" / "step_00000002"))
    # resume from the run's saved config, extending the run
    assert main(["train", "--run-dir", str(d / "run"), "--resume", "--steps", "3"]) == 0
    assert checkpoint.latest(d / "run").name == "step_00000003"
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", str(d / "run"), "--json", "--num-t", "2", "--max-sequences", "4"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    for key in ("nats_per_token", "bits_per_token", "perplexity", "stderr", "tokens", "bits_per_char"):
        assert key in result
    assert result["tokens"] == 4 * 16
    assert 0 < result["bits_per_token"] < 10


def test_eval_on_a_text_file_and_errors(run_dir, capsys):
    d, _ = run_dir
    text = d / "held.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 3)
    assert main(["eval", "--checkpoint", str(d / "run"), "--data", str(text), "--num-t", "2"]) == 0
    captured = capsys.readouterr()
    assert "bits/char" in captured.out
    # the cost is stated before the work starts: 8 blocks of 16 (132 characters) x 2 times
    assert "8 blocks of 16 x 2 times = 16 block evaluations" in captured.err
    bad = d / "bad.txt"
    bad.write_text("naïve ☃ " * 10)
    assert main(["eval", "--checkpoint", str(d / "run"), "--data", str(bad)]) == 2
    assert "character 'ï' (U+00EF) at position 2" in capsys.readouterr().err
    empty = d / "empty.txt"
    empty.write_text("")
    assert main(["eval", "--checkpoint", str(d / "run"), "--data", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(d / "run"), "--seq-len", "64", "--data", str(text)]) == 2
    assert "larger than the model's seq_len" in capsys.readouterr().err
    assert main(["train", "--steps", "0", "--run-dir", str(d / "x")]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err


def test_registry_and_module_entry_point():
    assert {"train", "eval"} <= set(SUBCOMMANDS)
    out = subprocess.run(
        [sys.executable, "-m", "ddm", "train", "--print-config", "--steps", "7"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert "steps = 7  #" in out


def test_eval_defaults_are_stated():
    from ddm.cli import EVAL_NUM_T, build_parser

    args = build_parser().parse_args(["eval", "--checkpoint", "x"])
    assert args.num_t == EVAL_NUM_T == 32  # 100k characters: about 400 blocks x 32, not x 128
    assert args.progress is None  # a bar when stderr is a terminal, as in `ddm train`


def test_bare_ddm_prints_the_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr()
    assert "usage: ddm" in out.out and "COMMAND" in out.out and "error" not in out.err


def test_sample_device_auto_is_the_default_and_works(run_dir, capsys):
    d, _ = run_dir
    args = ["sample", "--checkpoint", str(d / "run"), "--steps", "2", "--seq-len", "8", "--no-progress"]
    assert main([*args, "--device", "auto"]) == 0
    auto = capsys.readouterr().out
    assert main(args) == 0  # the default is auto too: the same samples
    assert capsys.readouterr().out == auto and auto.strip()


def _eval_runs(monkeypatch, run):
    """Replaces `ddm eval` by a subcommand without options that calls `run(args)`."""
    monkeypatch.setitem(SUBCOMMANDS, "eval", Subcommand("eval", "x", lambda p: None, run))


def _fail_with(monkeypatch, exc):
    def boom(args):
        raise exc

    _eval_runs(monkeypatch, boom)


@pytest.mark.parametrize(
    ("exc", "pattern"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/x/y.bin"),
            r"/x/y.bin: No space .*the disk is full",
        ),
        (OSError(errno.EROFS, "Read-only file system", "/x"), r"/x: Read-only .*choose a writable"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), r"/x: Permission denied .*permission"),
        (FloatingPointError("training loss is nan at step 9"), r"loss is nan at step 9 .*diverged"),
        (DivergenceError("weights are not finite at step 9"), r"weights are not finite at step 9$"),
        (json.JSONDecodeError("Unterminated string", '{"a', 1), r"invalid JSON .*half-written"),
        (SafetensorError("incomplete metadata"), r"damaged safetensors file .*incomplete metadata"),
    ],
)
def test_error_boundary_gives_one_line(monkeypatch, capsys, exc, pattern):
    _fail_with(monkeypatch, exc)
    assert main(["eval"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("ddm eval: error: "), err
    assert re.search(pattern, err.strip()), err


def test_error_boundary_names_the_file_of_a_raw_library_error(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file  # noqa: PLC0415 (the raw reader, only here)

    bad = tmp_path / "half.safetensors"
    bad.write_bytes(b"\x10\x00")
    _eval_runs(monkeypatch, lambda args: load_file(str(bad)))
    assert main(["eval"]) == 2
    assert f"damaged safetensors file in {bad}" in capsys.readouterr().err


def test_traceback_flag_and_ddm_debug_show_the_stack(monkeypatch, capsys):
    _fail_with(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "/x"))
    for argv in (["--traceback", "eval"], ["eval", "--traceback"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().endswith("write to another disk)")
    monkeypatch.setenv("DDM_DEBUG", "1")
    assert main(["eval"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("DDM_DEBUG", "0")
    assert main(["eval"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    _fail_with(monkeypatch, KeyError("internal"))
    with pytest.raises(KeyError):
        main(["eval"])


# ---------------------------------------------------------------------------------------------------
# Devices and memory
# ---------------------------------------------------------------------------------------------------


def test_resolve_device_rule():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected == resolve_device(None).type
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    with pytest.raises(InvalidArgument, match="not a device name"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgument, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_memory_estimate_small_and_large():
    small = estimate_bytes(batch=4, seq_len=16, hidden=32, heads=2, blocks=1, vocab=30)
    # attention 2 * 16^2, activations 16 * 32 * 16, logits 16 * 30, per sequence, float32
    assert small == 4 * 4 * (2 * 16 * 16 + 16 * 32 * 16 + 16 * 30)
    large = estimate_bytes(batch=64, seq_len=100_000, hidden=768, heads=12, blocks=12, vocab=50258)
    assert large > 64 * 12 * 100_000**2 * 4 > 3 * 10**13  # the L^2 attention dominates: 31 TB
    trained = estimate_bytes(batch=4, seq_len=16, hidden=32, heads=2, blocks=3, vocab=30, training=True)
    params = 12 * 3 * 32 * 32 + 2 * 30 * 32
    assert trained == 4 * (4 * (3 * (2 * 16 * 16 + 16 * 32 * 16) + 16 * 30) + 4 * params)
    with pytest.raises(InvalidArgument, match="seq_len must be a positive integer"):
        estimate_bytes(batch=1, seq_len=0, hidden=32, heads=2, blocks=1, vocab=30)
    check_memory(small, torch.device("cpu"), "x", "y")  # a tiny model fits
    pattern = r"x needs about [\d.]+ TB of memory, but cpu has .* available: y"
    with pytest.raises(InvalidArgument, match=pattern):
        check_memory(large, torch.device("cpu"), "x", "y")


def test_available_memory_is_read(monkeypatch):
    free = available_bytes(torch.device("cpu"))
    assert free is not None and free > 10**6


def test_eval_and_train_refuse_what_cannot_fit(run_dir, monkeypatch, capsys):
    d, _ = run_dir
    monkeypatch.setattr(_device, "available_bytes", lambda device: 1000)
    assert main(["eval", "--checkpoint", str(d / "run"), "--num-t", "1"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"ddm eval: error: .* needs about .* but cpu has 1.0 kB available: lower", err), err
    assert main(["train", "--run-dir", str(d / "big"), "--seq-len", "100000", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"ddm train: error: .*100000 tokens needs about .* TB", err), err
    assert not (d / "big").exists()  # refused before any work
