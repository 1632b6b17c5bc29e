"""`ddm report`: the likelihood bound next to the exact NLL of an autoregressive baseline, and generative
perplexity and unigram entropy against sampling steps, written as `report.json`, `report.md` and plots.

See `ddm.eval.metrics` for the three numbers and docs/quality.md for how to read them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddm._stats import error_bar, format_stderr
from ddm.errors import InvalidArgument
from ddm.eval.bound import heldout_blocks, likelihood_bound
from ddm.eval.metrics import exact_nll, gen_perplexity, unigram_entropy
from ddm.io import checkpoint
from ddm.io import load as load_model
from ddm.sampling import Sampler, sample
from ddm.sampling import predictors as predictor_registry

__all__ = [
    "DEFAULT_PREDICTORS",
    "DEFAULT_STEPS",
    "ReportSettings",
    "compute_report",
    "format_report",
    "parse_predictor",
    "plot_report",
    "report",
]

DEFAULT_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
# Two rows that differ: analytic and Euler are bit-identical for the absorbing graph with the log-linear
# schedule (`expm1(d) = h`), so the second default is exact first hitting (skipped for a uniform model,
# which has no MASK: add `euler` there).
DEFAULT_PREDICTORS = ("analytic", "first_hitting")


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------


def _run_dir(ckpt_path: Path) -> Path | None:
    """The run directory of `<run>/checkpoints/step_N`, or None for a loose checkpoint."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None


def _eval_curve(ckpt_path: Path) -> list[dict[str, float]]:
    """The held-out estimates logged during training (`eval_*` lines of `log.jsonl`), by step."""
    run_dir = _run_dir(ckpt_path)
    if run_dir is None or not (run_dir / "log.jsonl").is_file():
        return []
    curve = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval_bits_per_token" in rec:
            curve.append(
                {
                    "step": rec["step"],
                    "bits_per_token": rec["eval_bits_per_token"],
                    "stderr_bits": rec.get("eval_stderr_bits"),
                }
            )
    return curve


def _train_summary(cfg: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    train = cfg.get("train", {})
    return {
        "data": train.get("data"),
        "steps": state.get("step"),
        "batch_size": train.get("batch_size"),
        "seq_len": train.get("seq_len"),
        "tokens_seen": state.get("tokens_seen"),
        "model": train.get("model"),
        "seed": train.get("seed"),
    }


def _read_state(path: Path) -> dict[str, Any]:
    f = path / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def parse_predictor(spec: str) -> tuple[str, dict[str, Any]]:
    """`"name"` or `"name:key=value:key=value"` -> `(name, options of ddm.sample)`.

    For example `"confidence:entropy_bound=0.5"` or `"first_hitting:group_by_step=false"`. Values are
    read by the option's type (`true` / `false` for booleans).
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument(f"a predictor must be a non-empty string, got {spec!r}")
    name, *parts = spec.split(":")
    if name not in predictor_registry.names():
        raise InvalidArgument(f"predictors must be among {predictor_registry.names()}, got {name!r}")
    known = predictor_registry.option_types()  # read from the predictors' config dataclasses
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key or not value:
            raise InvalidArgument(f"predictor {spec!r}: options are written key=value, got {part!r}")
        if key not in known:
            raise InvalidArgument(f"predictor {spec!r}: unknown option {key!r} (known: {sorted(known)})")
        kind = known[key]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                options[key] = value.lower() == "true"
            else:
                options[key] = kind(value)
        except ValueError:
            raise InvalidArgument(
                f"predictor {spec!r}: {key} must be a {kind.__name__}, got {value!r}"
            ) from None
    if name == "first_hitting":
        # one call per grid step by default, so that the step count bounds the network calls
        options.setdefault("group_by_step", True)
    return name, options


def _uses_steps(name: str, options: dict[str, Any]) -> bool:
    """Whether the row's sampler depends on the step count (a threshold or entropy rule does not)."""
    if name == "first_hitting":
        return bool(options.get("group_by_step"))
    if name == "confidence":
        return options.get("threshold") is None and options.get("entropy_bound") is None
    return True


def _parse_steps(steps: Any) -> list[int]:
    if isinstance(steps, str):
        try:
            steps = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise InvalidArgument(f"steps must be comma-separated integers, got {steps!r}") from None
    steps = list(steps)
    if not steps or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps):
        raise InvalidArgument(f"steps must be a non-empty list of positive integers, got {steps!r}")
    return sorted(set(steps))


@dataclass(frozen=True)
class ReportSettings:
    """What a report measures (see `report`)."""

    steps: Any = DEFAULT_STEPS  # sampling steps, a list or a comma-separated string
    predictors: tuple[str, ...] = DEFAULT_PREDICTORS  # rows: `name` or `name:key=value:...`
    num_samples: int = 32  # samples per (predictor, steps)
    num_t: int = 64  # stratified times per block for the bound
    max_sequences: int | None = None  # score at most this many held-out blocks (None: all)
    batch_size: int = 64  # rows per network call for the bound and the judge
    seed: int = 0  # seeds the bound's draws and the samplers

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _parse_steps(self.steps))
        object.__setattr__(self, "predictors", tuple(self.predictors))
        n = self.num_samples
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidArgument(f"num_samples must be a positive integer, got {n!r}")

    def rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        """`(spec, predictor, options)` of every row, each checked (`InvalidArgument` naming it)."""
        return [(spec, *parse_predictor(spec)) for spec in self.predictors]


# ---------------------------------------------------------------------------------------------------
# Compute
# ---------------------------------------------------------------------------------------------------


def report(
    checkpoints: list[str | os.PathLike],
    judge: str | os.PathLike,
    *,
    out: str | os.PathLike = "report",
    device: str | torch.device = "cpu",
    plot: bool = True,
    log: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Quality report of diffusion checkpoints against an autoregressive judge; writes `out/`.

    For each diffusion checkpoint, on the held-out blocks of its training corpus (`seq_len` of the model):
    the likelihood bound (`likelihood_bound`, `num_t` stratified times per block), the judge's exact NLL
    on the same blocks and their ratio (bound / NLL, >= 1 when the diffusion model is no better than the
    AR one); then for each predictor and number of steps, `num_samples` samples (seed `seed`, denoised)
    with their generative perplexity under the judge and their unigram entropy, next to both numbers for
    the held-out blocks themselves.

    Writes `out/report.md` (tables, `format_report`), `out/report.json` (everything, with the training
    budgets; `compute_report`) and, with `plot=True` and matplotlib, `out/bound.png` (the held-out bound
    logged during training against the step, with the AR NLL) and `out/gen_perplexity.png` (generative
    perplexity and entropy against network calls, log axis; `plot_report`).

    Args:
        checkpoints: diffusion checkpoints or run directories.
        judge: an autoregressive checkpoint or run directory trained on the same corpus and tokenizer.
        out: output directory (created).
        device: where the models run.
        plot: write the PNG plots.
        log: a callable taking a progress line (e.g. `print`), or None.
        **settings: the fields of `ReportSettings`: `steps` (a list or a comma-separated string),
            `predictors` (any registered predictor; first hitting, confidence and ReMDM only for absorbing
            models; each optionally with options of `ddm.sample` as `name:key=value:...`, e.g.
            `"confidence:entropy_bound=0.5"`, `"first_hitting:group_by_step=false"`,
            `"analytic:top_p=0.9"`; first hitting is grouped by step by default, so at most `steps`
            calls; a row whose commit rule ignores the step count runs once, at the largest `steps`;
            default `DEFAULT_PREDICTORS`, analytic and first hitting: analytic and Euler are bit-identical
            for the absorbing graph with the log-linear schedule, so they would make duplicate rows),
            `num_samples`, `num_t`, `max_sequences`, `batch_size`, `seed`. Each row records its
            `network_calls` and `calls_per_sequence` (the rows evaluated over the samples: a call on a
            subset of the rows costs less), and the plot reads against the latter.

    Returns:
        The content of `report.json`.
    """
    if not checkpoints:
        raise InvalidArgument("report needs at least one diffusion checkpoint")
    result = compute_report(checkpoints, judge, ReportSettings(**settings), device=device, log=log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(format_report(result))
    if plot:
        plot_report(result, out)
    return result


def compute_report(
    checkpoints: list[str | os.PathLike],
    judge: str | os.PathLike,
    settings: ReportSettings,
    *,
    device: str | torch.device = "cpu",
    log: Any = None,
) -> dict[str, Any]:
    """The numbers of `report` (the content of `report.json`), without writing anything."""
    rows = settings.rows()  # every row checked before the first model is loaded
    say = log if log is not None else (lambda _msg: None)
    device = torch.device(device)
    judge_path = checkpoint.resolve(judge)
    judge_cfg = checkpoint.read_config(judge_path)
    judge_model = load_model(judge_path, device=device)
    if getattr(judge_model, "objective", None) != "autoregressive":
        raise InvalidArgument(f"judge {str(judge)!r} is not an autoregressive checkpoint (objective)")
    result: dict[str, Any] = {
        "judge": {
            "checkpoint": str(judge_path),
            "parameters": judge_model.num_parameters(),
            "train": _train_summary(judge_cfg, _read_state(judge_path)),
            "curve": _eval_curve(judge_path),
        },
        "settings": {
            "steps": settings.steps,
            "predictors": list(settings.predictors),
            "num_samples": settings.num_samples,
            "num_t": settings.num_t,
            "max_sequences": settings.max_sequences,
            "seed": settings.seed,
            "entropy": "per-sample unigram entropy in nats, averaged over samples",
            "gen_perplexity": "exp(mean judge NLL per token over all sample tokens)",
        },
        "models": [],
    }
    for ck in checkpoints:
        entry, model = _model_entry(ck, judge_model, judge_cfg, settings, device, say)
        entry["samples"] = _sample_rows(model, judge_model, rows, settings, say)
        result["models"].append(entry)
    return result


def _model_entry(
    ck: Any, judge_model: Any, judge_cfg: dict, settings: ReportSettings, device: torch.device, say: Any
) -> tuple[dict[str, Any], Any]:
    """A diffusion checkpoint's bound, the judge's NLL on the same blocks, and the data reference."""
    path = checkpoint.resolve(ck)
    cfg = checkpoint.read_config(path)
    if cfg.get("objective", "diffusion") == "autoregressive":
        raise InvalidArgument(f"checkpoint {str(ck)!r} is not a diffusion checkpoint: use it as --judge")
    if cfg.get("tokenizer") != judge_cfg.get("tokenizer"):
        raise InvalidArgument(
            f"checkpoint {str(ck)!r} and the judge have different tokenizers: the judge must be "
            "trained on the same corpus"
        )
    model = load_model(path, device=device)
    L = model.seq_len
    if L > judge_model.seq_len:
        raise InvalidArgument(f"the judge's seq_len {judge_model.seq_len} is shorter than the model's {L}")
    data = heldout_blocks(path, L)
    if settings.max_sequences is not None:
        data = data[: settings.max_sequences]
    say(f"{path}: bound on {data.shape[0]} held-out blocks of {L}, {settings.num_t} t each")
    bound = likelihood_bound(
        model, data, num_t=settings.num_t, batch_size=settings.batch_size, seed=settings.seed
    )
    ar = exact_nll(judge_model, data, batch_size=settings.batch_size)
    ref = data[: max(settings.num_samples, 1)]
    entry = {
        "checkpoint": str(path),
        "graph": cfg["graph"],
        "schedule": cfg["schedule"],
        "parameters": model.num_parameters(),
        "train": _train_summary(cfg, _read_state(path)),
        "bound": bound.to_dict(),
        "ar_nll": ar.to_dict(),
        "bound_over_ar": bound.nats_per_token / ar.nats_per_token,
        "data": {
            "blocks": int(ref.shape[0]),
            "gen_perplexity": gen_perplexity(ref, judge_model, batch_size=settings.batch_size),
            "entropy": unigram_entropy(ref),
        },
        "curve": _eval_curve(path),
    }
    return entry, model


def _sample_rows(
    model: Any,
    judge_model: Any,
    rows: list[tuple[str, str, dict[str, Any]]],
    settings: ReportSettings,
    say: Any,
) -> list[dict[str, Any]]:
    """Every (predictor, steps) row of one model: samples, their generative perplexity and entropy."""
    out = []
    for spec, predictor, options in rows:
        if predictor_registry.get(predictor).needs_mask and getattr(model.graph, "mask_id", None) is None:
            continue  # first hitting, confidence and ReMDM need a MASK
        # every option checked before the first sample (an InvalidArgument naming it)
        Sampler(model.graph, model.schedule, predictor=predictor, **options)
        for n in settings.steps if _uses_steps(predictor, options) else settings.steps[-1:]:
            t0 = time.perf_counter()
            x, stats = sample(
                model, n, predictor=predictor, batch_size=settings.num_samples, seed=settings.seed,
                return_stats=True, **options,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            row = {
                "predictor": spec,
                "steps": n,
                "network_calls": stats.network_calls,
                # the cost per sequence: a call on a subset of the rows (first hitting grouped by step,
                # confidence, caching) evaluates fewer sequences
                "calls_per_sequence": stats.rows_evaluated / settings.num_samples,
                "gen_perplexity": gen_perplexity(x, judge_model, batch_size=settings.batch_size),
                "entropy": unigram_entropy(x),
                "sample_seconds": seconds,
            }
            if getattr(model, "tokenizer", None) is not None:
                row["example"] = model.tokenizer.decode(x[0].tolist())[:200]
            out.append(row)
            say(
                f"  {spec:8s} {n:5d} steps, {stats.network_calls:5d} calls "
                f"({row['calls_per_sequence']:.1f} per sequence): gen ppl "
                f"{row['gen_perplexity']:.3f}, entropy {row['entropy']:.3f} ({seconds:.1f} s)"
            )
    return out


# ---------------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------------


def _graph_name(entry: dict[str, Any]) -> str:
    g = entry["graph"]
    return str(g.get("name") or g.get("type") or g)


def format_report(r: dict[str, Any]) -> str:
    """`report.md`: the tables of a `compute_report` result."""
    j = r["judge"]
    s = r["settings"]
    lines = [
        "# ddm quality report",
        "",
        f"Judge (autoregressive baseline): `{j['checkpoint']}`, {j['parameters']:,} parameters, "
        f"trained {j['train']['steps']} steps x batch {j['train']['batch_size']} x seq_len "
        f"{j['train']['seq_len']} on `{j['train']['data']}`.",
        "",
        "## Likelihood on the held-out blocks",
        "",
        "The diffusion number is an upper bound on the NLL (SEDD Theorem 3.6, estimated with "
        f"{s['num_t']} stratified times per block); the autoregressive number is exact.",
        "",
        "| model | params | steps x batch x L | bound (bits/token) | AR NLL (bits/token) | bound / AR |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for m in r["models"]:
        t = m["train"]
        b, a = m["bound"], m["ar_nll"]
        lines.append(
            f"| {_graph_name(m)} `{Path(m['checkpoint']).parent.parent.name}` | {m['parameters']:,} | "
            f"{t['steps']} x {t['batch_size']} x {t['seq_len']} | "
            f"{b['bits_per_token']:.4f} +- {format_stderr(b['stderr_bits'])} | "
            f"{a['bits_per_token']:.4f} +- {format_stderr(a['stderr_bits'])} | {m['bound_over_ar']:.3f} |"
        )
    lines += [
        "",
        "## Generative perplexity and entropy against network calls",
        "",
        f"{s['num_samples']} samples per row (seed {s['seed']}); generative perplexity = "
        "exp(mean judge NLL per token); entropy = per-sample unigram entropy in nats, averaged. "
        "Held-out data blocks of the same length are the reference.",
    ]
    for m in r["models"]:
        d = m["data"]
        lines += [
            "",
            f"### {_graph_name(m)} `{m['checkpoint']}`",
            "",
            "| predictor | steps | network calls | calls per sequence | gen. perplexity | entropy (nats) | "
            "sampling s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| held-out data | - | - | - | {d['gen_perplexity']:.3f} | {d['entropy']:.3f} | - |",
        ]
        for row in m["samples"]:
            lines.append(
                f"| {row['predictor']} | {row['steps']} | {row['network_calls']} | "
                f"{row['calls_per_sequence']:.1f} | {row['gen_perplexity']:.3f} | {row['entropy']:.3f} | "
                f"{row['sample_seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------------


def plot_report(r: dict[str, Any], out: Path) -> None:
    """`out/bound.png` and `out/gen_perplexity.png` of a `compute_report` result (needs matplotlib)."""
    try:
        import matplotlib  # optional (the `plot` extra): imported only to draw

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after matplotlib.use: pyplot picks its backend when imported
    except ImportError:  # the plots are optional
        return
    _plot_bound(plt, r, Path(out))
    _plot_samples(plt, r, Path(out))


def _plot_bound(plt: Any, r: dict[str, Any], out: Path) -> None:
    """The held-out bound logged in training against the step, with the AR NLL."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in r["models"]:
        c = m["curve"]
        if c:
            ax.errorbar(
                [p["step"] for p in c],
                [p["bits_per_token"] for p in c],
                yerr=[error_bar(p["stderr_bits"]) for p in c],
                fmt="o-",
                ms=3,
                label=f"{_graph_name(m)}: held-out bound (in training)",
            )
        ax.axhline(m["bound"]["bits_per_token"], ls=":", lw=1, color=ax.lines[-1].get_color() if c else None)
    jc = r["judge"]["curve"]
    if jc:
        ax.plot(
            [p["step"] for p in jc],
            [p["bits_per_token"] for p in jc],
            "s-",
            ms=3,
            color="black",
            label="autoregressive: exact NLL (in training)",
        )
    if r["models"]:
        ax.axhline(
            r["models"][0]["ar_nll"]["bits_per_token"], ls="--", color="black", lw=1, label="AR NLL (final)"
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("bits / token (held-out)")
    ax.set_title("likelihood bound (diffusion) vs exact NLL (autoregressive)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bound.png", dpi=90)
    plt.close(fig)


def _plot_samples(plt: Any, r: dict[str, Any], out: Path) -> None:
    """Generative perplexity and entropy against network calls per sequence."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in r["models"]:
        for predictor in r["settings"]["predictors"]:
            rows = [row for row in m["samples"] if row["predictor"] == predictor]
            if not rows:
                continue
            label = f"{_graph_name(m)} {Path(m['checkpoint']).parent.parent.name}, {predictor}"
            xs = [row["calls_per_sequence"] for row in rows]
            a1.plot(xs, [row["gen_perplexity"] for row in rows], "o-", label=label)
            a2.plot(xs, [row["entropy"] for row in rows], "o-", label=label)
    for i, m in enumerate(r["models"]):
        kw = {"ls": "--", "lw": 1, "color": "gray"}
        a1.axhline(m["data"]["gen_perplexity"], label="held-out data" if i == 0 else None, **kw)
        a2.axhline(m["data"]["entropy"], label="held-out data" if i == 0 else None, **kw)
    for a, name in ((a1, "generative perplexity (AR judge)"), (a2, "unigram entropy (nats, per sample)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("network calls per sequence")
        a.set_ylabel(name)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gen_perplexity.png", dpi=90)
    plt.close(fig)
