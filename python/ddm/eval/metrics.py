"""Model quality: the exact NLL of the autoregressive baseline, generative perplexity, entropy, `ddm report`.

Three numbers put a diffusion model in context (SEDD, Lou, Meng, Ermon 2024, sections 5.1-5.2):

- The held-out **likelihood bound** of the diffusion model (`ddm.evaluate.likelihood_bound`), an upper
  bound on its NLL, next to the **exact NLL** of an autoregressive model (`ddm.model.autoregressive`)
  of the same size, trained on the same data for the same budget, on the same held-out blocks.
- **Generative perplexity**: samples scored by an autoregressive judge trained on the same corpus
  (`gen_perplexity`). Low is not always good: a sampler that collapses onto frequent tokens gets a low
  perplexity, so it is reported with the **unigram entropy** of the samples (`unigram_entropy`) and with
  both numbers for held-out data of the same length, the reference a sampler should approach.
- Both at several numbers of sampling steps, for both predictors (`report`, `ddm report`).

Categoricals in ddm's samplers are drawn exactly in float64; the reference code's float32 Gumbel-max
draws truncate the tails and lower both numbers (Zheng et al. 2024, arXiv 2409.02908; SPEC section 5).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddm.model.autoregressive import ARModel, _check_tokens, sequence_nll

__all__ = [
    "DEFAULT_STEPS",
    "NLL",
    "add_report_arguments",
    "exact_nll",
    "gen_perplexity",
    "report",
    "run_report",
    "unigram_entropy",
]

DEFAULT_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
PREDICTORS = ("analytic", "euler")


@dataclass
class NLL:
    """The exact negative log-likelihood of an autoregressive model on held-out blocks.

    The keys match `ddm.evaluate.Bound` where they mean the same thing, so `ddm eval --json` prints the
    same fields for both kinds of checkpoint.

    Attributes:
        nats_per_token: `-log p(x) / L`, averaged over blocks (exact: no bound, no Monte Carlo).
        bits_per_token: the same in bits.
        perplexity: `exp(nats_per_token)`.
        stderr: standard error of `nats_per_token` over blocks (NaN for one block).
        stderr_bits: the same in bits.
        tokens: tokens scored (`sequences * seq_len`).
        sequences: number of blocks.
        seq_len: tokens per block.
        unit: what a token is (`"char"`, `"byte"`, `"token"`, ...).
        exact: always True (a `Bound` is an upper bound).
    """

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    stderr: float
    stderr_bits: float
    tokens: int
    sequences: int
    seq_len: int
    unit: str
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; adds `bits_per_<unit>` when the unit is not "token" (as `Bound.to_dict`)."""
        d = asdict(self)
        if self.unit != "token":
            d[f"bits_per_{self.unit}"] = self.bits_per_token
        return d

    def __str__(self) -> str:
        return (
            f"{self.bits_per_token:.4f} +- {self.stderr_bits:.4f} bits/{self.unit} exact NLL "
            f"({self.nats_per_token:.4f} nats/{self.unit}, perplexity {self.perplexity:.3f}; "
            f"{self.sequences} blocks of {self.seq_len})"
        )


def _as_blocks(model: ARModel, data: Any, seq_len: int | None) -> torch.Tensor:
    from ddm.data import blocks
    from ddm.evaluate import text_blocks

    if isinstance(data, str):
        return text_blocks(model, data, seq_len)
    x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"data must hold integer token ids, got dtype {x.dtype}")
    if x.dim() == 1:
        return blocks(x.long(), seq_len if seq_len is not None else model.seq_len)
    if x.dim() != 2:
        raise ValueError(f"data must be [M, L] blocks or a 1-D stream, got shape {tuple(x.shape)}")
    return x.long()


def _per_sequence_nll(judge: ARModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[M]` float64 NLL of each block in nats (eval mode, no gradients)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = _check_tokens(x, judge.vocab_size, "samples")
    if x.shape[1] > judge.seq_len:
        raise ValueError(f"blocks of {x.shape[1]} tokens are longer than the judge's seq_len {judge.seq_len}")
    was_training = judge.training
    judge.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(judge.device)  # (b, L)
                out.append(sequence_nll(judge, xb).double().cpu())  # (b,)
    finally:
        if was_training:
            judge.train()
    return torch.cat(out)  # (M,)


def exact_nll(
    model: ARModel,
    data: torch.Tensor | np.ndarray | str,
    *,
    batch_size: int = 64,
    seq_len: int | None = None,
    max_sequences: int | None = None,
) -> NLL:
    """The exact NLL per token of an autoregressive model on blocks (the AR twin of `likelihood_bound`).

    Every token of a block is scored, the first one by the model's learned distribution after BOS (see
    `ddm.model.autoregressive`), so the number is directly comparable with the diffusion bound on the same
    blocks.

    Args:
        model: an `ARModel`.
        data: `[M, L]` token blocks, a 1-D token stream (cut into blocks of `seq_len`), or text (encoded
            with `model.tokenizer`).
        batch_size: blocks per network call.
        seq_len: block length for a stream or text (default: the model's).
        max_sequences: use at most this many blocks (the first ones).

    Returns:
        An `NLL`.
    """
    if getattr(model, "objective", None) != "autoregressive":
        raise TypeError(f"model must be an autoregressive ARModel, got {type(model).__name__}")
    x = _as_blocks(model, data, seq_len)
    if max_sequences is not None:
        x = x[:max_sequences]
    if x.numel() == 0:
        raise ValueError("no data to evaluate")
    M, L = x.shape
    per_seq = _per_sequence_nll(model, x, batch_size) / L  # (M,) nats per token
    nats = float(per_seq.mean())
    stderr = float(per_seq.std(unbiased=True) / math.sqrt(M)) if M > 1 else math.nan
    tokenizer = getattr(model, "tokenizer", None)
    ln2 = math.log(2)
    return NLL(
        nats_per_token=nats,
        bits_per_token=nats / ln2,
        perplexity=math.exp(nats),
        stderr=stderr,
        stderr_bits=stderr / ln2,
        tokens=M * L,
        sequences=M,
        seq_len=L,
        unit=getattr(tokenizer, "unit", "token") if tokenizer is not None else "token",
    )


def gen_perplexity(samples: torch.Tensor, judge: ARModel, *, batch_size: int = 64) -> float:
    """Generative perplexity: the judge's perplexity of the samples, `exp(mean NLL per token)`.

    The mean is over all tokens of all samples (every sample has the same length, so this is also the
    exponential of the mean per-sample NLL per token). SEDD's evaluation averages the per-sample
    perplexities instead, which is larger by Jensen's inequality; the token-level mean is the standard
    definition of perplexity and does not let a few bad samples dominate. Every token counts, the first
    one scored by the judge's unconditional distribution after BOS.

    Args:
        samples: int64 `[B, L]` token ids in the judge's vocabulary (absorbing samples must be fully
            denoised: a MASK id is out of range), `L <= judge.seq_len`.
        judge: an `ARModel` trained on the corpus the samples should imitate.
        batch_size: samples per network call.

    Returns:
        The perplexity, a float >= 1.
    """
    if getattr(judge, "objective", None) != "autoregressive":
        raise TypeError(f"judge must be an autoregressive ARModel, got {type(judge).__name__}")
    nll = _per_sequence_nll(judge, samples, batch_size)  # (B,) nats
    return math.exp(float(nll.sum()) / samples.numel())


def unigram_entropy(samples: torch.Tensor, *, pooled: bool = False) -> float:
    """Unigram entropy of samples, in nats.

    With `pooled=False` (default, as in the literature, e.g. Zheng et al. 2024): for each sample b the
    entropy of its empirical token frequencies, `H_b = -sum_v (n_bv / L) ln(n_bv / L)` with `n_bv` the
    count of token v in sample b, averaged over samples. It lies in `[0, ln min(L, V)]` and depends on L,
    so compare it only with samples (or data blocks) of the same length. With `pooled=True`: the entropy
    of the token frequencies over all `B * L` tokens together.

    Args:
        samples: int64 `[B, L]` non-negative token ids.
        pooled: pool all tokens instead of averaging per-sample entropies.

    Returns:
        The entropy in nats.
    """
    if not torch.is_tensor(samples):
        raise TypeError(f"samples must be a LongTensor [B, L], got {type(samples).__name__}")
    if samples.dtype.is_floating_point or samples.dtype == torch.bool:
        raise TypeError(f"samples must hold integer token ids, got dtype {samples.dtype}")
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must have shape [B, L] with B, L >= 1, got {tuple(samples.shape)}")
    x = samples.long().cpu()
    if int(x.min()) < 0:
        raise ValueError(f"samples hold a negative token id ({int(x.min())})")
    rows = x.reshape(1, -1) if pooled else x  # (R, n)
    V = int(x.max()) + 1
    counts = torch.zeros(rows.shape[0], V, dtype=torch.float64)  # (R, V)
    counts.scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.float64))
    p = counts / rows.shape[1]  # (R, V)
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)  # (R,)
    return float(h.mean())


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
                    "stderr_bits": rec.get("eval_stderr_bits", math.nan),
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


def _parse_steps(steps: Any) -> list[int]:
    if isinstance(steps, str):
        try:
            steps = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"steps must be comma-separated integers, got {steps!r}") from None
    steps = list(steps)
    if not steps or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps):
        raise ValueError(f"steps must be a non-empty list of positive integers, got {steps!r}")
    return sorted(set(steps))


def report(
    checkpoints: list[str | os.PathLike],
    judge: str | os.PathLike,
    *,
    steps: Any = DEFAULT_STEPS,
    predictors: tuple[str, ...] = PREDICTORS,
    num_samples: int = 32,
    out: str | os.PathLike = "report",
    num_t: int = 64,
    max_sequences: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    plot: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Quality report of diffusion checkpoints against an autoregressive judge; writes `out/`.

    For each diffusion checkpoint, on the held-out blocks of its training corpus (`seq_len` of the model):
    the likelihood bound (`likelihood_bound`, `num_t` stratified times per block), the judge's exact NLL
    on the same blocks and their ratio (bound / NLL, >= 1 when the diffusion model is no better than the
    AR one); then for each predictor and number of steps, `num_samples` samples (seed `seed`, denoised)
    with their generative perplexity under the judge and their unigram entropy, next to both numbers for
    the held-out blocks themselves.

    Writes `out/report.md` (tables), `out/report.json` (everything, with the training budgets) and, with
    `plot=True` and matplotlib, `out/bound.png` (the held-out bound logged during training against the
    step, with the AR NLL) and `out/gen_perplexity.png` (generative perplexity and entropy against steps,
    log axis).

    Args:
        checkpoints: diffusion checkpoints or run directories.
        judge: an autoregressive checkpoint or run directory trained on the same corpus and tokenizer.
        steps: numbers of sampling steps, a list or a comma-separated string.
        predictors: any of `"analytic"`, `"euler"`.
        num_samples: samples per (predictor, steps).
        out: output directory (created).
        num_t: stratified times per block for the bound.
        max_sequences: score at most this many held-out blocks (default all).
        batch_size: rows per network call for the bound and the judge.
        seed: seeds the bound's draws and the samplers.
        device: where the models run.
        plot: write the PNG plots.
        log: a callable taking a progress line (e.g. `print`), or None.

    Returns:
        The content of `report.json`.
    """
    from ddm import checkpoint
    from ddm.evaluate import heldout_blocks, likelihood_bound
    from ddm.sampling import sample

    if not checkpoints:
        raise ValueError("report needs at least one diffusion checkpoint")
    steps = _parse_steps(steps)
    predictors = tuple(predictors)
    for p in predictors:
        if p not in PREDICTORS:
            raise ValueError(f"predictors must be among {PREDICTORS}, got {p!r}")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    say = log if log is not None else (lambda _msg: None)
    device = torch.device(device)
    out = Path(out)

    judge_path = checkpoint.resolve(judge)
    judge_cfg = checkpoint.read_config(judge_path)
    judge_model = checkpoint.load(judge_path, device=device)
    if getattr(judge_model, "objective", None) != "autoregressive":
        raise ValueError(f"judge {str(judge)!r} is not an autoregressive checkpoint (objective)")
    result: dict[str, Any] = {
        "judge": {
            "checkpoint": str(judge_path),
            "parameters": judge_model.num_parameters(),
            "train": _train_summary(judge_cfg, _read_state(judge_path)),
            "curve": _eval_curve(judge_path),
        },
        "settings": {
            "steps": steps,
            "predictors": list(predictors),
            "num_samples": num_samples,
            "num_t": num_t,
            "max_sequences": max_sequences,
            "seed": seed,
            "entropy": "per-sample unigram entropy in nats, averaged over samples",
            "gen_perplexity": "exp(mean judge NLL per token over all sample tokens)",
        },
        "models": [],
    }
    for ck in checkpoints:
        path = checkpoint.resolve(ck)
        cfg = checkpoint.read_config(path)
        if cfg.get("objective", "diffusion") != "diffusion":
            raise ValueError(f"checkpoint {str(ck)!r} is not a diffusion checkpoint: use it as --judge")
        if cfg.get("tokenizer") != judge_cfg.get("tokenizer"):
            raise ValueError(
                f"checkpoint {str(ck)!r} and the judge have different tokenizers: the judge must be "
                "trained on the same corpus"
            )
        model = checkpoint.load(path, device=device)
        L = model.seq_len
        if L > judge_model.seq_len:
            raise ValueError(f"the judge's seq_len {judge_model.seq_len} is shorter than the model's {L}")
        data = heldout_blocks(path, L)
        if max_sequences is not None:
            data = data[:max_sequences]
        say(f"{path}: bound on {data.shape[0]} held-out blocks of {L}, {num_t} t each")
        bound = likelihood_bound(model, data, num_t=num_t, batch_size=batch_size, seed=seed)
        ar = exact_nll(judge_model, data, batch_size=batch_size)
        ref = data[: max(num_samples, 1)]
        entry: dict[str, Any] = {
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
                "gen_perplexity": gen_perplexity(ref, judge_model, batch_size=batch_size),
                "entropy": unigram_entropy(ref),
            },
            "curve": _eval_curve(path),
            "samples": [],
        }
        for predictor in predictors:
            for n in steps:
                t0 = time.perf_counter()
                x = sample(model, n, predictor=predictor, batch_size=num_samples, seed=seed)  # (K, L)
                seconds = time.perf_counter() - t0
                row = {
                    "predictor": predictor,
                    "steps": n,
                    "gen_perplexity": gen_perplexity(x, judge_model, batch_size=batch_size),
                    "entropy": unigram_entropy(x),
                    "sample_seconds": seconds,
                }
                if getattr(model, "tokenizer", None) is not None:
                    row["example"] = model.tokenizer.decode(x[0].tolist())[:200]
                entry["samples"].append(row)
                say(
                    f"  {predictor:8s} {n:5d} steps: gen ppl {row['gen_perplexity']:.3f}, "
                    f"entropy {row['entropy']:.3f} ({seconds:.1f} s)"
                )
        result["models"].append(entry)

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(_markdown(result))
    if plot:
        _plots(result, out)
    return result


def _graph_name(entry: dict[str, Any]) -> str:
    g = entry["graph"]
    return str(g.get("name") or g.get("type") or g)


def _markdown(r: dict[str, Any]) -> str:
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
            f"{b['bits_per_token']:.4f} +- {b['stderr_bits']:.4f} | "
            f"{a['bits_per_token']:.4f} +- {a['stderr_bits']:.4f} | {m['bound_over_ar']:.3f} |"
        )
    lines += [
        "",
        "## Generative perplexity and entropy against sampling steps",
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
            "| predictor | steps | gen. perplexity | entropy (nats) | sampling s |",
            "|---|---:|---:|---:|---:|",
            f"| held-out data | - | {d['gen_perplexity']:.3f} | {d['entropy']:.3f} | - |",
        ]
        for row in m["samples"]:
            lines.append(
                f"| {row['predictor']} | {row['steps']} | {row['gen_perplexity']:.3f} | "
                f"{row['entropy']:.3f} | {row['sample_seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _plots(r: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plots are optional
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in r["models"]:
        c = m["curve"]
        if c:
            ax.errorbar(
                [p["step"] for p in c],
                [p["bits_per_token"] for p in c],
                yerr=[2 * p["stderr_bits"] for p in c],
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

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in r["models"]:
        for predictor in r["settings"]["predictors"]:
            rows = [row for row in m["samples"] if row["predictor"] == predictor]
            if not rows:
                continue
            label = f"{_graph_name(m)}, {predictor}"
            xs = [row["steps"] for row in rows]
            a1.plot(xs, [row["gen_perplexity"] for row in rows], "o-", label=label)
            a2.plot(xs, [row["entropy"] for row in rows], "o-", label=label)
    for i, m in enumerate(r["models"]):
        kw = {"ls": "--", "lw": 1, "color": "gray"}
        a1.axhline(m["data"]["gen_perplexity"], label="held-out data" if i == 0 else None, **kw)
        a2.axhline(m["data"]["entropy"], label="held-out data" if i == 0 else None, **kw)
    for a, name in ((a1, "generative perplexity (AR judge)"), (a2, "unigram entropy (nats, per sample)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("sampling steps")
        a.set_ylabel(name)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gen_perplexity.png", dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# ddm report (registered in ddm.cli)
# ---------------------------------------------------------------------------------------------------


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `ddm report`."""
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
        default=",".join(PREDICTORS),
        metavar="P,P",
        help="analytic and/or euler (default: both)",
    )
    p.add_argument("--num-samples", type=int, default=32, metavar="K", help="samples per row (default 32)")
    p.add_argument("--out", default="report", metavar="DIR", help="output directory (default ./report)")
    p.add_argument("--num-t", type=int, default=64, help="times per block for the bound (default 64)")
    p.add_argument("--max-sequences", type=int, help="score at most this many held-out blocks")
    p.add_argument("--batch-size", type=int, default=64, help="rows per network call (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bound and the samplers (default 0)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")


def run_report(args: argparse.Namespace) -> int:
    """Runs `report` from parsed arguments and prints where the files are."""
    import sys

    from ddm.train import resolve_device

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
