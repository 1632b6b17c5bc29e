"""A completion request's fields, checked against the served model and the server's limits.

`CompletionRequest.parse(body, model, limits)` reads the JSON body of `POST /v1/completions` (the OpenAI
completions fields plus ddm's `steps`, `predictor` and every predictor option, e.g. `order`), and raises
`RequestError` naming the field, the value and what is allowed; `sample_kwargs()` gives the arguments of
the request's `ddm.sample` run. The model is the server's, fixed at start-up: no field names a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ddm.errors import InvalidArgument
from ddm.sampling import predictors
from ddm.sampling.sampler import Sampler, random_seed

__all__ = ["CompletionRequest", "Limits", "RequestError"]

# OpenAI fields that are accepted only at their neutral value (ddm has no such feature)
_NEUTRAL = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": None,
    "echo": False,
    "logit_bias": None,
}
_IGNORED = ("user", "stream_options")
_FIELDS = ("model", "prompt", "suffix", "max_tokens", "n", "stop", "seed", "stream", "steps", "predictor",
           "temperature", "top_p", "top_k", "best_of")  # fmt: skip


class RequestError(InvalidArgument):
    """A bad request: HTTP `status` (400, 404 or 413) with the OpenAI error's `param` and `code`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`ddm serve` flags)."""

    max_body_bytes: int = 65536  # the JSON body (413 past it)
    max_prompt_tokens: int | None = None  # None: the model's seq_len - 1
    max_tokens: int | None = None  # None: the model's seq_len
    max_n: int = 8
    max_steps: int = 1024


def _int(body: dict, name: str, default: Any, lo: int, hi: int | None) -> Any:
    value = body.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", name)
    if value < lo or (hi is not None and value > hi):
        span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise RequestError(f"{name} must lie in {span}, got {value}", name)
    return value


def _float(body: dict, name: str, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}", name)
    return float(value)


def _text(body: dict, name: str, required: bool) -> str | None:
    value = body.get(name)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(
            f"{name} must be a string (or a list of one string), got {type(value).__name__}", name
        )
    return value


def _encode(tok: Any, text: str | None, name: str) -> list[int]:
    if not text:
        return []
    if tok is None:
        raise RequestError(f"this model has no tokenizer, so {name} text cannot be encoded", name)
    try:
        return list(tok.encode(text))
    except (ValueError, KeyError) as e:  # DataError names the characters outside the vocabulary
        raise RequestError(f"{name}: {e}", name) from e


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise RequestError(f"stop must be a non-empty string or a list of up to 4, got {stop!r}", "stop")
    return tuple(stops)


def _check_fields(body: dict, model_name: str) -> None:
    """`RequestError` for an unknown field, an unsupported OpenAI feature, or another model."""
    known = {*_FIELDS, *_NEUTRAL, *_IGNORED, *predictors.option_fields()}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}", unknown[0])
    for name, neutral in _NEUTRAL.items():
        if body.get(name, neutral) not in (neutral, None):
            raise RequestError(f"{name} is not supported by a diffusion model (got {body[name]!r})", name)
    if body.get("model") not in (None, model_name):
        raise RequestError(
            f"model {body['model']!r} is not served here; this server serves {model_name!r}",
            "model", 404, "model_not_found",
        )  # fmt: skip


@dataclass(frozen=True)
class CompletionRequest:
    """A checked completion request (see the module docstring)."""

    prompt: str
    prompt_ids: list[int]
    suffix_ids: list[int]
    max_tokens: int
    n: int
    seed: int
    stream: bool
    steps: int
    predictor: str
    stop: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + self.max_tokens + len(self.suffix_ids)

    def sample_kwargs(self) -> dict[str, Any]:
        """The arguments of this request's `ddm.sample` run (all but the model)."""
        return dict(
            steps=self.steps, batch_size=self.n, seq_len=self.seq_len, seed=self.seed,
            predictor=self.predictor, prefix=self.prompt_ids or None, suffix=self.suffix_ids or None,
            **self.options,
        )  # fmt: skip

    @classmethod
    def parse(cls, body: Any, model: Any, limits: Limits, model_name: str) -> CompletionRequest:
        """Check `body` (the parsed JSON) against `model` and `limits`; `RequestError` on a bad field."""
        if not isinstance(body, dict):
            raise RequestError(f"the body must be a JSON object, got {type(body).__name__}")
        _check_fields(body, model_name)
        tok = getattr(model, "tokenizer", None)
        prompt = _text(body, "prompt", required=False) or ""
        prompt_ids = _encode(tok, prompt, "prompt")
        suffix_ids = _encode(tok, _text(body, "suffix", required=False), "suffix")
        max_prompt = limits.max_prompt_tokens or model.seq_len - 1
        if len(prompt_ids) + len(suffix_ids) > max_prompt:
            raise RequestError(
                f"the prompt (and suffix) is {len(prompt_ids) + len(suffix_ids)} tokens, over the limit of "
                f"{max_prompt}", "prompt", code="context_length_exceeded",
            )  # fmt: skip
        room = model.seq_len - len(prompt_ids) - len(suffix_ids)
        limit = min(room, limits.max_tokens or model.seq_len)
        max_tokens = _int(body, "max_tokens", min(16, limit), 1, None)
        if max_tokens > limit:
            raise RequestError(
                f"max_tokens={max_tokens} is over the limit of {limit} (the model's {model.seq_len}-token "
                "window less the prompt, and the server's max_tokens)", "max_tokens",
                code="context_length_exceeded",
            )  # fmt: skip
        n = _int(body, "n", 1, 1, limits.max_n)
        if body.get("best_of") not in (None, n):
            raise RequestError("best_of is not supported (leave it out or equal to n)", "best_of")
        seed = _int(body, "seed", None, 0, 2**63 - 1)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(f"stream must be a boolean, got {stream!r}", "stream")
        steps = _int(body, "steps", 32, 1, limits.max_steps)
        predictor = body.get("predictor", "analytic")
        if predictor not in predictors.names():
            raise RequestError(
                f"predictor must be one of {list(predictors.names())}, got {predictor!r}", "predictor"
            )
        options = {k: body[k] for k in predictors.option_fields() if k in body}
        for name in ("temperature", "top_p"):
            if name in body:
                options[name] = _float(body, name, None)
        if options.get("temperature", 1.0) is None:
            options.pop("temperature")
        try:  # the predictor checks its options and the graph
            Sampler(model.graph, model.schedule, predictor, **options)
        except InvalidArgument as e:
            raise RequestError(str(e)) from e
        return cls(
            prompt=prompt, prompt_ids=prompt_ids, suffix_ids=suffix_ids, max_tokens=max_tokens, n=n,
            seed=random_seed() if seed is None else seed, stream=stream, steps=steps, predictor=predictor,
            stop=_stops(body), options=options,
        )  # fmt: skip
