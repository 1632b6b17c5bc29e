"""ddm models in EleutherAI's lm-evaluation-harness (`lm_eval`): the `ddm` model type.

    ddm-lm-eval --model ddm --model_args pretrained=PATH_OR_HUB_ID,num_t=128 --tasks TASKS

`ddm-lm-eval` (or `python -m ddm.eval.harness`) is lm_eval's own command line with the `ddm` model
registered: lm_eval finds models in a fixed table (`lm_eval.models.MODEL_MAPPING`) and has no plugin
entry points, so the plain `lm_eval` command cannot know about ddm; every argument is lm_eval's. From
Python, `import ddm.eval.harness` registers the model for `lm_eval.simple_evaluate(model="ddm", ...)`.

What the three request types compute:

- `loglikelihood(context, continuation)`: minus the bound on `-log p(continuation | context)`
  (`ddm.eval.conditional_bound`): the context is clean, only the continuation is noised; for the
  absorbing graph that is exact conditioning. Context and continuation are tokenized apart (trailing
  spaces of the context move to the continuation, as lm_eval's HF model does); a window longer than the
  model's `seq_len` keeps the last `seq_len` tokens (the context is cut on the left), and a continuation
  longer than a window is scored in windows of `seq_len`, each given the tokens before it.
- `loglikelihood_rolling(text)`: minus the bound on the whole text, in windows of `seq_len`: full windows
  are scored on their own (the same blocks and draws as `ddm eval` / `likelihood_bound`), and a last
  partial window is scored given the tokens before it that fill the window.
- `generate_until(context, {until, max_gen_toks})`: `ddm.sample` with the context as the prompt, cut at
  the first end-of-sequence token (when the tokenizer has one), then at the first `until` string.

These log-likelihoods are Monte-Carlo estimates of upper bounds on the NLL (SEDD's ELBO, as LLaDA, MDLM
and DUO report them), not exact values: perplexities from them are upper bounds. The adapter says so on
stderr after each batch of requests, with the Monte-Carlo standard error next to each figure, and puts
the same figures in the results' `config.ddm` (`get_model_info`). lm_eval's own stderr column is over
documents.

Model arguments: `pretrained` (a path or Hub id, required), `num_t` (stratified times per window,
default 128), `seed` (default 0), `eval_batch_size` (rows per network call, default 64: `ddm eval
--batch-size`), `steps` (sampling steps for generation, default 128), `max_gen_toks` (default 256),
`device` (default CPU; `cuda`, lm_eval's default, falls back to the CPU without CUDA), `raw_weights`,
`guidance` (prompt guidance strength `gamma >= 0` for `generate_until`: the unconditional pass
sees the context as MASK; default none, the plain sampler).
lm_eval's `batch_size` is accepted and unused: ddm batches rows of (window, time) itself.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the `lm-eval` extra
    raise ImportError("the lm_eval adapter needs lm_eval: pip install 'ddm[lm-eval]'") from e

from ddm.eval.bound import conditional_bound
from ddm.io import load
from ddm.sampling import sample

__all__ = ["DDMLM", "main", "windows"]

NOTE = (
    "ddm: log-likelihoods are Monte-Carlo estimates of upper bounds on the NLL (the diffusion ELBO), "
    "not exact values; perplexities computed from them are upper bounds"
)


def windows(n_tokens: int, start: int, seq_len: int) -> list[tuple[int, int, int]]:
    """The windows that score tokens `[start, n_tokens)` given the tokens before them.

    Each is `(begin, first_scored, end)`: the window is `tokens[begin:end]`, at most `seq_len` long, and
    scores `tokens[first_scored:end]` given `tokens[begin:first_scored]`. The scored parts are
    consecutive chunks of `seq_len` from `start` on; each window is the `seq_len` tokens ending at its
    chunk's end (fewer at the start of the text).
    """
    out = []
    for lo in range(start, n_tokens, seq_len):
        hi = min(lo + seq_len, n_tokens)
        out.append((max(0, hi - seq_len), lo, hi))
    return out


def _arg(v: Any, kind: type, name: str) -> Any:
    if isinstance(v, str) and kind is int:
        v = int(v)
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise ValueError(f"model_args {name} must be a positive integer, got {v!r}")
    return v


@register_model("ddm")
class DDMLM(LM):
    """lm_eval's `LM` interface over a ddm score model (see the module docstring)."""

    def __init__(
        self,
        pretrained: Any,
        num_t: int = 128,
        seed: int = 0,
        eval_batch_size: int = 64,
        steps: int = 128,
        max_gen_toks: int = 256,
        device: str | None = None,
        raw_weights: bool = False,
        batch_size: Any = None,  # lm_eval's, unused (see the module docstring)
        guidance: Any = None,  # prompt guidance in generate_until (ddm.sampling.guidance)
        **kwargs: Any,
    ) -> None:
        super().__init__()
        ignored = {k for k in kwargs if k not in ("max_batch_size", "trust_remote_code", "dtype")}
        if ignored:
            raise ValueError(f"unknown ddm model_args: {sorted(ignored)}")
        if kwargs.get("trust_remote_code"):
            raise ValueError("ddm never runs code from a model repository: trust_remote_code is refused")
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line defaults to --device cuda; a machine without CUDA runs on the CPU
            print(
                f"ddm: device {device!r} asked for but CUDA is not available: using the CPU", file=sys.stderr
            )
            device = "cpu"
        if isinstance(pretrained, torch.nn.Module):
            self.model = pretrained
        else:
            self.model = load(str(pretrained), device=device, ema=not raw_weights)
        self.model.eval()
        if getattr(self.model, "objective", "diffusion") == "autoregressive":
            raise ValueError("the ddm lm_eval model scores diffusion models (ScoreModel), not ARModel")
        self.tokenizer = getattr(self.model, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer: lm_eval passes text")
        self.num_t = _arg(num_t, int, "num_t")
        self.seed = int(seed)
        self.eval_batch_size = _arg(eval_batch_size, int, "eval_batch_size")
        self.steps = _arg(steps, int, "steps")
        self.max_gen_toks = _arg(max_gen_toks, int, "max_gen_toks")
        self.guidance = None if guidance in (None, "", "none", "None") else float(guidance)
        self.seq_len = int(self.model.seq_len)
        self.pretrained = str(getattr(self.model, "checkpoint_path", pretrained))
        self.records: dict[str, list[dict[str, Any]]] = {"loglikelihood": [], "loglikelihood_rolling": []}

    # ---- scoring -----------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _score(self, tokens: list[int], start: int) -> tuple[float, float, int]:
        """(bound in nats on tokens[start:] given tokens[:start], its MC stderr, scored tokens)."""
        if start >= len(tokens):
            return 0.0, 0.0, 0
        by_len: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for begin, first, end in windows(len(tokens), start, self.seq_len):
            x = torch.tensor(tokens[begin:end], dtype=torch.long)
            scored = torch.arange(end - begin) >= (first - begin)
            by_len.setdefault(end - begin, []).append((x, scored))
        nats, var, n = 0.0, 0.0, 0
        for group in by_len.values():  # windows of one length go through one call, in text order
            b = conditional_bound(
                self.model,
                torch.stack([g[0] for g in group]),
                torch.stack([g[1] for g in group]),
                num_t=self.num_t,
                batch_size=self.eval_batch_size,
                seed=self.seed,
            )
            nats += float(b.nats.sum())
            var += float((b.mc_stderr.nan_to_num(0.0) ** 2).sum())
            n += int(b.tokens.sum())
        return nats, math.sqrt(var), n

    @torch.no_grad()
    def _is_greedy(self, ctx: list[int], cont: list[int]) -> bool:
        """Absorbing graph: is the continuation the argmax of each position's law given the context, with
        the whole continuation masked (one network call)? Other graphs: False."""
        graph = self.model.graph
        if getattr(graph, "mask_id", None) is None or len(cont) > self.seq_len:
            return False
        ctx = ctx[max(0, len(ctx) + len(cont) - self.seq_len) :]
        x = torch.tensor([ctx + [graph.mask_id] * len(cont)], dtype=torch.long, device=self.model.device)
        sigma = self.model.schedule.total_noise(torch.tensor([1e-3], dtype=torch.float64)).to(x.device)
        log_score = self.model(x, sigma)[0, len(ctx) :, : graph.mask_id]  # (len(cont), vocab)
        return log_score.argmax(-1).tolist() == cont

    def loglikelihood(self, requests: Iterable[Any]) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            spaces = len(context) - len(context.rstrip())
            if spaces:  # the boundary space belongs to the continuation's first token
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            ctx = self._encode(context)
            cont = self._encode(continuation)
            nats, se, n = self._score(ctx + cont, len(ctx))
            self.records["loglikelihood"].append(
                {"nats": nats, "mc_stderr": se, "tokens": n, "task": getattr(req, "task_name", None)}
            )
            out.append((-nats, self._is_greedy(ctx, cont)))
        self._report("loglikelihood")
        return out

    def loglikelihood_rolling(self, requests: Iterable[Any]) -> list[float]:
        out = []
        for req in requests:
            text = req.args[0]
            nats, se, n = self._score(self._encode(text), 0)
            self.records["loglikelihood_rolling"].append(
                {
                    "nats": nats,
                    "mc_stderr": se,
                    "tokens": n,
                    "bytes": len(text.encode("utf-8")),
                    "task": getattr(req, "task_name", None),
                }
            )
            out.append(-nats)
        self._report("loglikelihood_rolling")
        return out

    def generate_until(self, requests: Iterable[Any]) -> list[str]:

        out = []
        for i, req in enumerate(requests):
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            gen = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.seq_len - 1)
            ctx = self._encode(context)
            ctx = ctx[max(0, len(ctx) - (self.seq_len - gen)) :]
            eos = getattr(self.tokenizer, "eos_id", None)
            x, stats = sample(
                self.model, self.steps, batch_size=1, prompt=ctx, max_new_tokens=gen,
                stop_at_eos=eos is not None, seed=self.seed + i, return_stats=True,
                guidance=self.guidance if ctx else None,  # prompt guidance needs a prompt
            )  # fmt: skip
            ids = x[0].tolist()
            if eos is not None:  # the response ends at its first EOS
                ids = [t for t in ids[: int(stats.lengths[0])] if t != eos]
            text = self.tokenizer.decode(ids)
            cuts = [text.find(u) for u in until if u and u in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out

    # ---- reporting ---------------------------------------------------------------------------------

    def summary(self, kind: str, task: str | None = None) -> dict[str, Any] | None:
        """Totals of the requests of one kind so far (of one task, if given): nats and MC stderr, per token
        and per byte; without a task, also `tasks`: the same per task."""
        recs = [r for r in self.records[kind] if task is None or r.get("task") == task]
        if not recs:
            return None
        nats = sum(r["nats"] for r in recs)
        se = math.sqrt(sum(r["mc_stderr"] ** 2 for r in recs))
        tokens = sum(r["tokens"] for r in recs)
        d = {"requests": len(recs), "nats": nats, "mc_stderr_nats": se, "tokens": tokens}
        if tokens:
            d["bits_per_token"] = nats / tokens / math.log(2)
            d["mc_stderr_bits_per_token"] = se / tokens / math.log(2)
        nbytes = sum(r.get("bytes", 0) for r in recs)
        if nbytes:
            d["bits_per_byte"] = nats / nbytes / math.log(2)
            d["mc_stderr_bits_per_byte"] = se / nbytes / math.log(2)
        if task is None:
            names = sorted({str(r["task"]) for r in recs if r.get("task") is not None})
            d["tasks"] = {name: self.summary(kind, name) for name in names}
        return d

    def _report(self, kind: str) -> None:
        total = self.summary(kind)
        if total is None:
            return
        lines = [NOTE + ".", f"ddm {kind}: num_t={self.num_t}, seed={self.seed} (+- Monte-Carlo s.e.)"]
        for name, s in [("all", total), *total["tasks"].items()]:
            line = f"  {name}: {s['requests']} requests, NLL bound {s['nats']:.4f}"
            line += f" +- {s['mc_stderr_nats']:.4f} nats"
            if "bits_per_token" in s:
                line += f", {s['bits_per_token']:.4f} +- {s['mc_stderr_bits_per_token']:.4f} bits/token"
            if "bits_per_byte" in s:
                line += f", {s['bits_per_byte']:.4f} +- {s['mc_stderr_bits_per_byte']:.4f} bits/byte"
            lines.append(line)
        print("\n".join(lines), file=sys.stderr, flush=True)

    def get_model_info(self) -> dict[str, Any]:
        return {
            "ddm": {
                "note": NOTE,
                "pretrained": self.pretrained,
                "num_t": self.num_t,
                "seed": self.seed,
                "mc_stderr": "Monte-Carlo s.e. over the num_t times; variances summed over requests",
                **{kind: self.summary(kind) for kind in self.records if self.records[kind]},
            }
        }


def main(argv: list[str] | None = None) -> None:
    """`ddm-lm-eval`: lm_eval's command line with the `ddm` model registered."""
    from lm_eval.__main__ import cli_evaluate  # lm_eval's command line, loaded only when it is run

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
