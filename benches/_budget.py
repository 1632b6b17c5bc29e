"""Equal training wall clock on a shared machine: time each configuration's optimizer step side by side,
then give each the number of steps that fits the budget (used by budget_compare.py and block_compare.py).

Training for a wall-clock budget directly would make each run's length depend on the load while it ran.
Instead `seconds_per_step` trains every configuration for a few steps in alternating rounds (so a change
in load falls on all of them alike) and reads the optimizer steps' own time from the run log
(`elapsed_s`: no start-up, evaluation or checkpoint); `steps_for` turns a budget into steps.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from ddm.training import TrainConfig, train


def seconds_per_step(
    configs: dict[str, dict], out_dir: Path, steps: int = 6, rounds: int = 2
) -> dict[str, float]:
    """Median seconds per optimizer step of each `TrainConfig` dict, after two warm-up steps."""
    times: dict[str, list[float]] = {n: [] for n in configs}
    for r in range(rounds):
        for name, cfg in configs.items():
            run = Path(out_dir) / f"probe-{name}-{r}"
            shutil.rmtree(run, ignore_errors=True)
            over = {"run_dir": str(run), "steps": steps + 2, "save_every": 10**9, "log_every": 1,
                    "eval_every": 0, "progress": False, "plot": False}  # fmt: skip
            train(TrainConfig.from_dict({**cfg, **over}))
            log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            at = {rec["step"]: rec["elapsed_s"] for rec in log if "elapsed_s" in rec}
            times[name].append((at[steps + 2] - at[2]) / steps)
            shutil.rmtree(run, ignore_errors=True)
    return {n: statistics.median(v) for n, v in times.items()}


def steps_for(budget_s: float, s_per_step: float) -> int:
    """The optimizer steps that fill `budget_s` seconds at `s_per_step`."""
    return max(1, round(budget_s / s_per_step))
