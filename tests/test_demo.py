"""`make demo` end to end at a few steps: it trains, evaluates, samples and says how real the words are."""

from __future__ import annotations

import re

from ddm.demo import DEMO_SAMPLER, main


def test_demo_trains_evaluates_samples_and_reports_real_words(tmp_path, capsys):
    run = tmp_path / "demo"
    assert (
        main(["--steps", "2", "--run-dir", str(run), "--num-t", "1", "--samples", "2", "--sample-steps", "4"])
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"held-out bound: +\d+\.\d{3} \+- \d+\.\d{3} bits/char", out)
    lines = out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("samples (4 calls, "))
    assert lines[i].endswith(", the Rust core):")
    assert all(f"{key} {value}" in lines[i] for key, value in DEMO_SAMPLER.items())  # says how it sampled
    assert all(line.startswith("  ") and len(line) > 2 for line in lines[i + 1 : i + 3])
    real = re.search(r"real words: +(\d+)% of the samples' words .* \(held-out lines: (\d+)%\)", out)
    assert real and 0 <= int(real[1]) <= 100 and 50 <= int(real[2]) <= 100  # held-out Hamlet is real words
    assert f"checkpoint: {run}/checkpoints/step_00000002" in out
    # a second call reuses the finished run instead of training again
    assert main(["--steps", "2", "--run-dir", str(run), "--num-t", "1", "--samples", "0"]) == 0
    assert "reusing the finished run" in capsys.readouterr().out
