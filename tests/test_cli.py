"""The command line: `ddm train` then `ddm eval --json`, resume from the run's own config, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ddm.cli import SUBCOMMANDS, main
from ddm.io import checkpoint

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
