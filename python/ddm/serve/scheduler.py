"""Continuous batching across requests: one thread owns the model, every request's sampler borrows it.

Each request runs `ddm.sample` itself, in a worker thread, on a `BatchedModel`: a stand-in for the model
that hands each network call `(x, sigma)` to the `Scheduler` and waits for its rows of the output. The
scheduler's loop gathers the pending calls of every active request (each at its own step, with its own
noise level per row), concatenates the rows of the same length up to a token budget, runs ONE forward,
and gives each request its slice. Every step, predictor, option, seed, cache and conditioning is the
request's own `ddm.sample` run, through the predictor interface, unchanged.

So a request's tokens are `ddm.sample`'s with the same arguments, bit for bit, whatever else is in
flight, as long as the forward of one row does not depend on the other rows of its batch (its randomness
is keyed by `(seed, step, row, position)` and never sees the batch). `batch_invariant` checks that
property of the served model once at start-up; a bidirectional transformer on the CPU has it (rows never
interact); it is not promised on a GPU, where kernels may change with the batch shape.

Back-pressure: at most `max_active` requests sample at once, at most `max_queue` more wait for a worker;
beyond that `submit` raises `QueueFull` (HTTP 503). `Job.cancel` (a client that went away) makes the
request's next network call raise `Cancelled`, which ends its sampler and frees its rows.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ddm.errors import DdmError, InvalidArgument
from ddm.sampling import sample

__all__ = ["BatchedModel", "Cancelled", "Job", "QueueFull", "Scheduler", "batch_invariant"]


class QueueFull(DdmError):
    """Every worker is busy and the waiting queue is full (HTTP 503: try again later)."""


class Cancelled(DdmError):
    """The request was cancelled (its client went away); raised inside its sampler to end it."""


@dataclass
class _Call:
    """One pending network call of one request: its rows, and where the output goes."""

    job: Job
    x: torch.Tensor  # (b, L)
    sigma: torch.Tensor  # (b,)
    done: threading.Event = field(default_factory=threading.Event)
    out: torch.Tensor | None = None
    error: BaseException | None = None


class Job:
    """One request: the arguments of its `ddm.sample` run, its progress and its result.

    Args:
        kwargs: `ddm.sample`'s arguments other than the model (`steps`, `batch_size`, `seq_len`, `seed`,
            `predictor`, `prefix`, predictor options...).
        on_event: called from the worker thread with `("canvas", x)` before each network call (the tokens
            after the previous call's step), then `("done", x)` or `("error", exception)` once.
    """

    def __init__(self, kwargs: dict[str, Any], on_event: Callable[[str, Any], None]) -> None:
        self.kwargs = kwargs
        self.on_event = on_event
        self.calls = 0
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def cancel(self) -> None:
        """Stop at the next network call (the client went away)."""
        self.cancelled.set()


class BatchedModel(torch.nn.Module):
    """The model as one request's `ddm.sample` sees it: its attributes, with calls sent to the scheduler.

    It carries the served model's `graph`, `schedule`, `seq_len`, `time_independent`, `tokenizer` and
    `objective`, and a zero-size buffer of its device and dtype (so `sample` passes sigma as it would to
    the model itself).
    """

    def __init__(self, model: Any, scheduler: Scheduler, job: Job) -> None:
        super().__init__()
        for name in ("graph", "schedule", "seq_len", "time_independent", "tokenizer", "objective"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        device, dtype = _device_dtype(model)
        self.register_buffer("_probe", torch.empty(0, device=device, dtype=dtype), persistent=False)
        self._scheduler = scheduler
        self._job = job

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self._job.on_event("canvas", x)
        return self._scheduler.call(self._job, x, sigma)


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    for p in list(model.parameters()) + list(model.buffers()):
        return p.device, (p.dtype if p.is_floating_point() else torch.float32)
    return torch.device("cpu"), torch.float32


def batch_invariant(model: Any, rows: int = 3) -> bool:
    """Whether the model's output for a row is the same bits alone as in a batch (`rows` random rows)."""
    gen = torch.Generator().manual_seed(0)
    device, _ = _device_dtype(model)
    x = torch.randint(0, model.graph.dim, (rows, model.seq_len), generator=gen).to(device)
    sigma = torch.linspace(0.5, 2.0, rows, dtype=torch.float32).to(device)
    with torch.no_grad():
        full = model(x, sigma)
        return all(torch.equal(model(x[i : i + 1], sigma[i : i + 1]), full[i : i + 1]) for i in range(rows))


class Scheduler:
    """The loop that owns the model and batches the network calls of every active request.

    Args:
        model: the served model (`model(x, sigma) -> log_score`, fixed for the scheduler's life).
        max_batch_tokens: the most `rows x seq_len` of one forward (at least one request's call runs).
        max_active: how many requests sample at once (worker threads).
        max_queue: how many more may wait for a worker before `submit` refuses.
        gather_wait_s: how long a forward waits for active requests still stepping to send their call.
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch_tokens: int = 16384,
        max_active: int = 16,
        max_queue: int = 64,
        gather_wait_s: float = 0.002,
    ) -> None:
        for name, value in (("max_batch_tokens", max_batch_tokens), ("max_active", max_active)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise InvalidArgument(f"max_queue must be an int >= 0, got {max_queue!r}")
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_active = max_active
        self.max_queue = max_queue
        self.gather_wait_s = gather_wait_s
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._admitted = 0  # submitted and not finished (running or waiting for a worker)
        self._running = 0  # in a worker, sampling
        self._pool = ThreadPoolExecutor(max_workers=max_active, thread_name_prefix="ddm-serve-job")
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="ddm-serve-model", daemon=True)
        self.forwards = 0  # network calls run (each may hold several requests' rows)
        self.rows = 0  # rows evaluated in all
        self._thread.start()

    # ---- the request side --------------------------------------------------------------------------------
    @property
    def admitted(self) -> int:
        """Requests submitted and not yet finished."""
        return self._admitted

    @property
    def running(self) -> int:
        """Requests sampling now."""
        return self._running

    def submit(self, job: Job) -> Job:
        """Queue `job` for a worker; `QueueFull` when `max_active + max_queue` are already admitted."""
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if self._admitted >= self.max_active + self.max_queue:
                raise QueueFull(
                    f"the queue is full ({self._admitted} requests in flight, limit "
                    f"{self.max_active} running + {self.max_queue} waiting): retry later"
                )
            self._admitted += 1
        self._pool.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        with self._cond:
            self._running += 1
        try:
            if job.cancelled.is_set():
                raise Cancelled("cancelled before it started")
            x = sample(BatchedModel(self.model, self, job), **job.kwargs)
            job.on_event("done", x)
        except BaseException as e:  # every outcome reaches the request, which decides what it means
            job.on_event("error", e)
        finally:
            with self._cond:
                self._running -= 1
                self._admitted -= 1
                self._cond.notify_all()
            job.finished.set()

    def call(self, job: Job, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """One network call of `job` (from its worker): waits for the loop to run it with others."""
        if job.cancelled.is_set():
            raise Cancelled("the client went away")
        pending = _Call(job, x, sigma)
        with self._cond:
            if self._stop:
                raise Cancelled("the server is shutting down")
            self._pending.append(pending)
            self._cond.notify_all()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.out is not None
        job.calls += 1
        return pending.out

    # ---- the model side ----------------------------------------------------------------------------------
    def _gather(self) -> list[_Call] | None:
        """The calls of the next forward (None: stopping). Waits for a first call, then up to
        `gather_wait_s` for the other running requests to send theirs."""
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            deadline = time.monotonic() + self.gather_wait_s
            while len(self._pending) < self._running and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for p in [p for p in self._pending if p.job.cancelled.is_set()]:
                p.error = Cancelled("the client went away")
                p.done.set()
            self._pending = [p for p in self._pending if not p.job.cancelled.is_set()]
            taken, budget = [], self.max_batch_tokens
            for p in self._pending:  # oldest first; at least one
                cost = p.x.numel()
                if taken and cost > budget:
                    continue
                taken.append(p)
                budget -= cost
            self._pending = [p for p in self._pending if p not in taken]
            return taken

    def _loop(self) -> None:
        while True:
            calls = self._gather()
            if calls is None:
                return
            by_len: dict[int, list[_Call]] = {}
            for p in calls:  # rows of different lengths cannot share a forward without padding
                by_len.setdefault(p.x.shape[1], []).append(p)
            for group in by_len.values():
                self._forward(group)

    def _forward(self, group: list[_Call]) -> None:
        try:
            x = torch.cat([p.x for p in group])  # (B, L)
            sigma = torch.cat([p.sigma.reshape(-1) for p in group])  # (B,)
            with torch.no_grad():
                out = self.model(x, sigma)  # (B, L, dim)
            self.forwards += 1
            self.rows += x.shape[0]
            starts = itertools.accumulate([p.x.shape[0] for p in group], initial=0)
            for p, s in zip(group, starts, strict=False):
                p.out = out[s : s + p.x.shape[0]]
        except Exception as e:  # the model failed: each request of the batch gets the error
            for p in group:
                p.error = e
        for p in group:
            p.done.set()

    def close(self) -> None:
        """Stop the loop and the workers (running requests end with `Cancelled`)."""
        with self._cond:
            self._stop = True
            for p in self._pending:
                p.error = Cancelled("the server is shutting down")
                p.done.set()
            self._pending = []
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
