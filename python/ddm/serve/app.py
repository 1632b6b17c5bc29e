"""The FastAPI app of `ddm serve`: the OpenAI completions API over a `Scheduler`, and the page at `/`.

- `POST /v1/completions`: `CompletionRequest` fields. With `stream=true`, server-sent events: before each
  network call a chunk whose choices carry `text: ""` and `canvas` (the generated span as it stands, one
  entry per position, `null` where masked) with `call`; then one chunk per choice with its final `text`
  and `finish_reason`; then `data: [DONE]`. A client that joins the `text` deltas, or reads only the
  last chunk of each choice, gets the final text.
- `GET /v1/models`, `GET /health`, and `GET /` (a page that shows the canvas filling in; no CDN).
- Errors have the OpenAI shape `{"error": {"message", "type", "param", "code"}}`: 400 for a bad field or
  bad JSON, 401 for a wrong API key, 404 for another model, 413 for a body over the limit, 503 when the
  queue is full, 500 when the model fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ddm.errors import InvalidArgument
from ddm.sampling import predictors
from ddm.serve.request import CompletionRequest, Limits, RequestError
from ddm.serve.scheduler import Cancelled, Job, QueueFull, Scheduler, batch_invariant

__all__ = ["create_app"]

_PAGE = Path(__file__).parent / "static" / "index.html"


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 503: "server_overloaded", 500: "server_error"}
    body = {"error": {"message": message, "type": kind.get(status, "invalid_request_error"), "param": param,
                      "code": code}}  # fmt: skip
    return JSONResponse(body, status_code=status)


class _Renderer:
    """Token ids of a row to the text of its generated span, and to its canvas (per position)."""

    def __init__(self, model: Any) -> None:
        self.tok = getattr(model, "tokenizer", None)
        self.mask_id = getattr(model.graph, "mask_id", None)

    def text(self, ids: list[int]) -> str:
        if self.tok is None:
            return " ".join(map(str, ids))
        return self.tok.decode([i for i in ids if i != self.mask_id])

    def canvas(self, ids: list[int]) -> list[str | None]:
        return [None if i == self.mask_id else self.text([i]) for i in ids]


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
    """`(text up to the first stop sequence, finish_reason)`."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], "stop") if hits else (text, "length")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or `RequestError` 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body is {declared} bytes, over the limit of {limit}", status=413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"the body is over the limit of {limit} bytes", status=413)
    return body


def create_app(
    model: Any,
    *,
    model_name: str = "ddm",
    limits: Limits | None = None,
    api_key: str | None = None,
    scheduler: Scheduler | None = None,
) -> FastAPI:
    """The app serving `model` (fixed for its life). `scheduler`: the batching loop (a default one)."""
    if getattr(model, "objective", None) == "autoregressive" or getattr(model, "block_size", 0):
        raise InvalidArgument(
            "ddm serve batches diffusion models that generate seq_len tokens at once; autoregressive and "
            "block-diffusion models are not served yet"
        )
    model.eval()
    limits = limits or Limits()
    sched = scheduler or Scheduler(model)
    render = _Renderer(model)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        sched.close()  # the server stops: so do the loop and the workers

    app = FastAPI(title="ddm serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.scheduler = sched
    app.state.batch_invariant = batch_invariant(model)
    created = int(time.time())

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(
                    401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key"
                )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok", "model": model_name, "running": sched.running, "admitted": sched.admitted,
            "forwards": sched.forwards, "rows": sched.rows, "batch_invariant": app.state.batch_invariant,
        }  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "ddm",
                "seq_len": model.seq_len, "predictors": list(predictors.names())}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return _PAGE.read_text(encoding="utf-8")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        try:
            raw = await _read_body(request, limits.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RequestError(f"the body is not valid JSON: {e}") from e
            req = CompletionRequest.parse(body, model, limits, model_name)
        except RequestError as e:
            return _error(e.status, str(e), e.param, e.code)
        run = _Run(req, render, model_name)
        try:
            run.job = sched.submit(Job(req.sample_kwargs(), run.on_event))
        except QueueFull as e:
            return _error(503, str(e), code="queue_full")
        if req.stream:
            return StreamingResponse(run.sse(), media_type="text/event-stream")
        return await run.result(request)

    return app


class _Run:
    """One request in flight: the bridge from its worker thread's events to the event loop."""

    def __init__(self, req: CompletionRequest, render: _Renderer, model_name: str) -> None:
        self.req, self.render, self.model_name = req, render, model_name
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.job: Job | None = None
        self.calls = 0

    def on_event(self, kind: str, value: Any) -> None:  # in the worker thread
        if kind == "canvas":
            if not self.req.stream:
                return
            value = value.tolist()  # now: the sampler may reuse the buffer
        elif kind == "done":
            value = value.tolist()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def _span(self, row: list[int]) -> list[int]:
        start = len(self.req.prompt_ids)
        return row[start : start + self.req.max_tokens]

    def _chunk(self, choices: list[dict], **extra: Any) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": choices, **extra}  # fmt: skip

    def _final(self, rows: list[list[int]]) -> list[dict]:
        out = []
        for i, row in enumerate(rows):
            text, reason = _cut(self.render.text(self._span(row)), self.req.stop)
            out.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
        return out

    def _usage(self) -> dict:
        prompt = len(self.req.prompt_ids) + len(self.req.suffix_ids)
        done = self.req.max_tokens * self.req.n
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    async def result(self, request: Request) -> Any:
        """The non-streamed answer; a client that goes away cancels the job."""
        while True:
            try:
                kind, value = await asyncio.wait_for(self.queue.get(), timeout=0.25)
                break
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self._cancel()
                    return _error(499, "client closed the request")
        if kind == "error":
            return self._failure(value)
        return self._chunk(self._final(value), usage=self._usage(), seed=self.req.seed)

    def _failure(self, e: BaseException) -> JSONResponse:
        if isinstance(e, InvalidArgument):
            return _error(400, str(e))
        return _error(500, f"the model failed: {type(e).__name__}: {e}")

    def _cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    async def sse(self) -> Any:
        """The event stream (see the module docstring); a client that goes away cancels the job."""
        try:
            while True:
                kind, value = await self.queue.get()
                if kind == "canvas":
                    self.calls += 1
                    choices = [
                        {"index": i, "text": "", "logprobs": None, "finish_reason": None,
                         "canvas": self.render.canvas(self._span(row))}
                        for i, row in enumerate(value)
                    ]  # fmt: skip
                    yield _sse(self._chunk(choices, call=self.calls - 1, seed=self.req.seed))
                    continue
                if kind == "done":
                    for choice in self._final(value):
                        choice["canvas"] = self.render.canvas(self._span(value[choice["index"]]))
                        yield _sse(self._chunk([choice], call=self.calls, seed=self.req.seed))
                elif not isinstance(value, Cancelled):
                    yield _sse(json.loads(self._failure(value).body))
                yield "data: [DONE]\n\n"
                return
        finally:
            self._cancel()  # a no-op once finished


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
