"""A scheduler-style sampler for the SEDD reverse process (docs/math.md section 5), as in diffusers.

`Sampler` holds the time grid and the predictor, and turns one network output into one reverse step:

```python
sampler = Sampler(graph, schedule, predictor="analytic")
sampler.set_timesteps(128)
x = sampler.init_noise(batch_size, seq_len, seed=0)
for k in range(len(sampler.timesteps)):
    log_score = model(x, sampler.noise_level(k, batch_size))  # (B, L, dim)
    x = sampler.step(log_score, k, x, seed=0).prev_sample
```

`ddm.sampling.sample` is this loop, plus conditioning, caching and argument checks. The same loop runs
the unmasking predictors (`"first_hitting"`, `"confidence"`), whose number of calls and noise levels depend
on the tokens:

```python
k = 0
while not sampler.finished(x, k):
    log_score = model(x, sampler.noise_level(k, batch_size, x=x, seed=0))
    x = sampler.step(log_score, k, x, seed=0).prev_sample
    k += 1
```

Time grid: `t_k = linspace(1, eps, steps + 1)`. Step `k < steps` moves from `t_k` to `t_{k+1}` with the
predictor; with `denoise=True` a last step `k = steps` evaluates the network at `t_steps = eps` and removes
all remaining noise (`sigma = sigma_bar(eps)`). `timesteps` lists the times at which the network is called
(`steps + 1` of them with denoising, `steps` without).

Randomness is counter-based (docs/math.md section 6): a draw is keyed by
`(seed, step, seq_offset + b, position)`,
so sequence `b` of a batch does not depend on the batch size, the thread count or the device. On CPU the
step runs in the Rust core (`ddm._core`, through `ddm.sampling._native`); elsewhere, or with
`backend="torch"`, the torch twin computes the step probabilities (`ddm.sampling.torch_steps`) and an
inverse-CDF draw in float64 over hashed uniforms (`ddm._rng`). Both backends draw from the same
law; they do not give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddm import _rng
from ddm import graphs as _graphs
from ddm import schedules as _schedules
from ddm._categorical import inverse_cdf
from ddm.sampling import torch_steps
from ddm.sampling.proposal import apply_to_step, make_proposal
from ddm.sampling.unmasking import UNMASKING_PREDICTORS, check_unmasking

__all__ = [
    "BACKENDS",
    "PREDICTORS",
    "Sampler",
    "SamplerOutput",
    "inverse_cdf",
    "native_available",
    "random_seed",
]

PREDICTORS = ("analytic", "euler")
BACKENDS = ("auto", "rust", "torch")
_SEED_LIMIT = 2**64


@dataclass
class SamplerOutput:
    """What `Sampler.step` returns.

    Attributes:
        prev_sample: int64 tokens after the step, `[B, L]` (the sample at the next, less noisy time).
    """

    prev_sample: torch.Tensor


def native_available() -> bool:
    """Whether the Rust core (`ddm._core`) can be imported."""
    try:
        from ddm.sampling import _native  # noqa: F401 (on demand: the compiled core may be missing)
    except ImportError:
        return False
    return True


def random_seed(generator: torch.Generator | None = None) -> int:
    """A random 63-bit seed drawn from `generator` (torch's global generator when None).

    Drawing from torch's generator makes `torch.manual_seed` reproduce an unseeded run.
    """
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64).item())


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return `seed` as an int after checking that it lies in `[0, 2^64)`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(seed).__name__}")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"{name} must lie in [0, 2**64), got {seed}")
    return seed


def _as_graph(graph: Any) -> _graphs.Graph:
    if isinstance(graph, dict):
        return _graphs.from_config(graph)
    if not isinstance(graph, _graphs.Graph):
        raise TypeError(f"graph must be a ddm.graphs.Graph or its config dict, got {type(graph).__name__}")
    return graph


def _as_schedule(schedule: Any) -> _schedules.Schedule:
    if isinstance(schedule, dict):
        return _schedules.from_config(schedule)
    if not isinstance(schedule, _schedules.Schedule):
        raise TypeError(
            f"schedule must be a ddm.schedules.Schedule or its config dict, got {type(schedule).__name__}"
        )
    return schedule


class Sampler:
    """The SEDD reverse process as a scheduler: a time grid plus a predictor (docs/math.md section 5).

    Args:
        graph: the forward graph (`ddm.graphs.Uniform` / `Absorbing`) or its config dict.
        schedule: the noise schedule (`ddm.schedules.LogLinear` / `Geometric`) or its config dict.
        predictor: `"analytic"` (Tweedie tau-leaping, SEDD eq. 19) or `"euler"` (tau-leaping with the
            reverse rates, SEDD eq. 17); for the absorbing graph also `"first_hitting"` (exact, one
            position per call: `ddm.sampling.first_hitting`) or `"confidence"` (parallel decoding:
            `ddm.sampling.confidence`). Those two unmask positions instead of stepping on the grid: the
            tokens decide when they are done (`finished(x, k)`) and the noise level of each call
            (`noise_level(k, B, x=x, seed=seed)`); with the same seed the loop gives `ddm.sample`'s tokens.
        eps: the last time of the grid, in `(0, 1)`.
        denoise: end with a denoising step at `t = eps` that removes all remaining noise (absorbing: no
            MASK is left).
        temperature: divides the log-weights of the proposal (move) distribution of every step, > 0
            (`ddm.sampling.proposal`, docs/math.md section 5.10); 1 is the plain step.
        top_k: keep only the `k >= 1` most likely states of the proposal distribution; None keeps all.
        top_p: keep only its nucleus of mass `p` in `(0, 1]`; None keeps all.
        remask: absorbing graph: replace every step by the ReMDM step with remasking strength `eta` in
            `[0, 1]` (`ddm.sampling.remask`, docs/math.md section 10); None: the predictor's step.
        remask_schedule: `"cap"` or `"rescale"` (how `eta` sets the remasking probability per step).
        group_by_step: first hitting: the events of one grid step share one call at its top.
        tokens_per_step, threshold, order, entropy_bound: confidence: the commit rule and the score
            (see `ddm.sample`).
    """

    def __init__(
        self,
        graph: Any,
        schedule: Any,
        predictor: str = "analytic",
        eps: float = 1e-5,
        denoise: bool = True,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        remask: float | None = None,
        remask_schedule: str = "cap",
        group_by_step: bool = False,
        tokens_per_step: int | None = None,
        threshold: float | None = None,
        order: str = "confidence",
        entropy_bound: float | None = None,
    ) -> None:
        self.proposal = make_proposal(temperature, top_k, top_p)
        self.graph = _as_graph(graph)
        if remask is not None:
            from ddm.sampling.remask import check_remask

            remask = check_remask(remask, remask_schedule)
            if not self.graph.absorbing:
                raise ValueError("remask needs the absorbing graph: the uniform graph has no MASK to unmask")
        self.remask = remask
        self.remask_schedule = remask_schedule
        self.schedule = _as_schedule(schedule)
        if predictor not in PREDICTORS + UNMASKING_PREDICTORS:
            raise ValueError(
                f"predictor must be one of {PREDICTORS + UNMASKING_PREDICTORS}, got {predictor!r}"
            )
        self.unmasking_options = dict(
            group_by_step=group_by_step, tokens_per_step=tokens_per_step, threshold=threshold, order=order,
            entropy_bound=entropy_bound,
        )  # fmt: skip
        if predictor in UNMASKING_PREDICTORS:
            check_unmasking(predictor, self.graph, remask=remask, **self.unmasking_options)
        else:  # remask is checked above, for the grid predictors
            check_unmasking(predictor, self.graph, **self.unmasking_options)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a float, got {type(eps).__name__}")
        if not 0.0 < float(eps) < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        if not isinstance(denoise, bool):
            raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
        self.predictor = predictor
        self.eps = float(eps)
        self.denoise = denoise
        self.num_inference_steps: int | None = None
        self.times = torch.empty(0, dtype=torch.float64)
        self.timesteps = torch.empty(0, dtype=torch.float64)
        self.sigmas = torch.empty(0, dtype=torch.float64)
        self._rates = torch.empty(0, dtype=torch.float64)
        self._kinds: list[tuple[str, float]] = []
        self._levels: dict[int, torch.Tensor] = {}  # batch size -> [n_eval, B] step levels (the Rust input)
        self._n_free: torch.Tensor | None = None  # confidence: the MASK count of each row at t_index 0
        self._events: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None  # first hitting

    @property
    def unmasking(self) -> bool:
        """Whether the predictor unmasks positions (first hitting, confidence) instead of stepping on the
        grid: its number of calls is set by the tokens (`finished`), and `noise_level` needs them."""
        return self.predictor in UNMASKING_PREDICTORS

    # ---- config -----------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; `Sampler.from_config(s.config)` rebuilds the sampler."""
        return {
            "graph": self.graph.to_config(),
            "schedule": self.schedule.to_config(),
            "predictor": self.predictor,
            "eps": self.eps,
            "denoise": self.denoise,
            **self.proposal.to_config(),
            "remask": self.remask,
            "remask_schedule": self.remask_schedule,
            **self.unmasking_options,
        }

    def to_config(self) -> dict[str, Any]:
        """Same as `config`."""
        return self.config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sampler:
        """Rebuild a sampler from its `config` dict."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        extra = set(config) - {
            "graph",
            "schedule",
            "predictor",
            "eps",
            "denoise",
            "temperature",
            "top_k",
            "top_p",
            "remask",
            "remask_schedule",
            "group_by_step",
            "tokens_per_step",
            "threshold",
            "order",
            "entropy_bound",
        }
        if extra:
            raise ValueError(f"unknown sampler config keys {sorted(extra)}")
        if "graph" not in config or "schedule" not in config:
            raise ValueError("sampler config needs 'graph' and 'schedule'")
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"Sampler(graph={self.graph!r}, schedule={self.schedule!r}, predictor={self.predictor!r}, "
            f"eps={self.eps}, denoise={self.denoise}, steps={self.num_inference_steps}"
            + ("" if self.proposal.neutral else f", proposal={self.proposal}")
            + (
                ""
                if self.remask is None
                else f", remask={self.remask}, remask_schedule={self.remask_schedule!r}"
            )
            + "".join(
                f", {k}={v!r}"
                for k, v in self.unmasking_options.items()
                if self.unmasking and v not in (None, False)
            )
            + ")"
        )

    # ---- the time grid ----------------------------------------------------------------------------------
    def set_timesteps(self, steps: int) -> None:
        """Build the grid `t_k = linspace(1, eps, steps + 1)` (docs/math.md section 5).

        Sets `times` (`[steps + 1]`, the whole grid), `timesteps` (the times at which the network is
        evaluated: `times` with denoising, `times[:-1]` without) and `sigmas` (`sigma_bar` at `timesteps`,
        the noise level to give the network), all float64 on the CPU.

        Args:
            steps: the number of predictor steps, >= 1.
        """
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be an int, got {type(steps).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        t = torch.linspace(1.0, self.eps, steps + 1, dtype=torch.float64)  # (steps + 1,)
        sigma_bar, sigma = self.schedule(t)
        self.num_inference_steps = steps
        self.times = t
        self._sigma_bar = sigma_bar.to(torch.float64)
        self._rates = sigma.to(torch.float64)
        n_eval = steps + 1 if self.denoise else steps
        self.timesteps = t[:n_eval]
        self.sigmas = self._sigma_bar[:n_eval]
        self._kinds = [self._step_kind(k) for k in range(n_eval)]  # what step_kind returns, once per grid
        self._levels = {}

    def _check_index(self, t_index: Any) -> int:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(steps) before step()")
        if isinstance(t_index, torch.Tensor) and t_index.numel() == 1 and not t_index.is_floating_point():
            t_index = int(t_index.item())
        if isinstance(t_index, bool) or not isinstance(t_index, int):
            raise TypeError(f"t_index must be an int index into timesteps, got {type(t_index).__name__}")
        if self.unmasking and not self.unmasking_options["group_by_step"]:
            if t_index < 0:  # one call per event: as many as the tokens need (`finished`)
                raise ValueError(f"t_index must be >= 0, got {t_index}")
            return t_index
        n = len(self.timesteps) if not self.unmasking else self.num_inference_steps
        if not 0 <= t_index < n:
            raise ValueError(f"t_index must lie in [0, {n - 1}] for {n} timesteps, got {t_index}")
        return t_index

    def finished(self, x: torch.Tensor, t_index: int) -> bool:
        """Whether the process is over before the call at `t_index`, given the tokens `x` there.

        Grid predictors: `t_index == len(timesteps)`. First hitting and confidence: no MASK is left in `x`
        (and, grouped by step, also at the end of the grid). The loop over every predictor is then
        `k = 0; while not sampler.finished(x, k): ...; k += 1`.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(steps) before finished()")
        if not self.unmasking:
            return t_index >= len(self.timesteps)
        if self.unmasking_options["group_by_step"] and t_index >= self.num_inference_steps:
            return True
        return not bool((x == self.graph.dim - 1).any())

    def noise_level(
        self,
        t_index: int,
        batch_size: int,
        *,
        device: Any = None,
        dtype: Any = None,
        x: torch.Tensor | None = None,
        seed: int | None = None,
        seq_offset: int = 0,
    ):
        """The network's noise input for the call at `t_index`, a `[batch_size]` tensor.

        Grid predictors: `sigma_bar(timesteps[t_index])` (`x` and `seed` are not needed). First hitting:
        the level of each row's next unmasking time, keyed by `(seed, seq_offset + b)`
        (`ddm.sampling.first_hitting`; grouped by step, the top of grid step `t_index`). Confidence: the
        level whose masking probability is each row's masked fraction (`ddm.sampling.confidence`). Those
        two need the current tokens `x` and the `seed` of `step`.
        """
        k = self._check_index(t_index)
        dtype = dtype or torch.float64
        if not self.unmasking:
            return self.sigmas[k].to(dtype=dtype).expand(batch_size).to(device)
        if self.predictor == "first_hitting" and self.unmasking_options["group_by_step"]:
            return self._sigma_bar[k].to(dtype=dtype).expand(batch_size).to(device)
        if x is None or seed is None:
            raise ValueError(
                f"predictor={self.predictor!r}: noise_level(t_index, batch_size, x=x, seed=seed) needs the "
                "current tokens and the seed (the level depends on which positions are still masked)"
            )
        return self._unmasking_level(k, x, check_seed(seed), seq_offset).to(dtype=dtype, device=device)

    def _unmasking_level(self, k: int, x: torch.Tensor, seed: int, seq_offset: int) -> torch.Tensor:
        """`[B]` float64 on the device of `x`: the level of the call at `k` (first hitting or confidence)."""
        mask_id = self.graph.dim - 1
        rows = torch.arange(x.shape[0], dtype=torch.int64, device=x.device) + seq_offset
        if self.predictor == "first_hitting":
            from ddm.sampling.first_hitting import next_event

            u, levels = self._event_levels(seed, rows, x.shape[1])  # (B, L) each
            pos, _ = next_event(x, u, mask_id)  # (B,)
            return levels.gather(1, pos[:, None])[:, 0]
        from ddm.sampling.confidence import confidence_level

        return confidence_level(self.schedule, self.eps, (x == mask_id).sum(-1), self._free_count(k, x))

    def _event_levels(self, seed: int, rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First hitting: `first_hitting.event_levels` of these rows, kept for the run (they depend only on
        the seed, the rows and the length, and `noise_level` and `step` of every call need them)."""
        from ddm.sampling.first_hitting import event_levels

        key = (seed, int(rows[0]) if rows.numel() else 0, rows.numel(), length, rows.device)
        if self._events is None or self._events[0] != key:
            self._events = (key, event_levels(self.schedule, seed, rows, length, self.eps))
        return self._events[1]

    def _free_count(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Confidence: each row's MASK count at the first call (kept from `t_index` 0), `[B]`."""
        if k == 0:
            self._n_free = (x == self.graph.dim - 1).sum(-1)
        if self._n_free is None or self._n_free.shape[0] != x.shape[0]:
            raise RuntimeError(
                "predictor='confidence': the loop must start at t_index 0 with this batch (the level is the "
                "masked fraction of what was masked at the first call)"
            )
        return self._n_free.to(x.device)

    def step_kind(self, t_index: int) -> tuple[str, float]:
        """The step taken at `t_index`: `(kind, noise)` with `kind` in `{"euler", "analytic", "denoise"}`.

        `noise` is `rate_dt = sigma(t_k) (t_k - t_{k+1})` for Euler, `dsigma = sigma_bar(t_k) -
        sigma_bar(t_{k+1})` for the analytic step and `sigma_bar(eps)` for denoising (docs/math.md section 5).
        """
        return self._kinds[self._check_index(t_index)]

    def _step_kind(self, k: int) -> tuple[str, float]:
        steps = self.num_inference_steps
        assert steps is not None
        if k == steps:  # only reachable with denoise=True
            return "denoise", float(self._sigma_bar[k])
        if self.predictor == "euler":
            dt = float(self.times[k] - self.times[k + 1])
            return "euler", float(self._rates[k]) * dt
        return "analytic", float(self._sigma_bar[k] - self._sigma_bar[k + 1])

    def _step_levels(self, batch_size: int) -> torch.Tensor:
        """The `noise` of `step_kind` at every index, `[n_eval, batch_size]` float64 on the CPU, contiguous:
        built once per grid and batch size, so a step hands Rust a row of it instead of a new tensor."""
        levels = self._levels.get(batch_size)
        if levels is None:
            noise = torch.tensor([level for _, level in self._kinds], dtype=torch.float64)  # (n_eval,)
            levels = noise[:, None].expand(-1, batch_size).contiguous()  # (n_eval, B)
            self._levels = {batch_size: levels}
        return levels

    # ---- one reverse step -------------------------------------------------------------------------------
    def _check_step_inputs(self, log_score: Any, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 2:
            raise TypeError(
                f"x must be an int64 tensor of shape [B, L], got "
                f"{type(x).__name__ if not isinstance(x, torch.Tensor) else (x.dtype, tuple(x.shape))}"
            )
        if not isinstance(log_score, torch.Tensor) or not log_score.is_floating_point():
            raise TypeError("log_score must be a floating tensor of shape [B, L, dim]")
        want = (*x.shape, self.graph.dim)
        if tuple(log_score.shape) != want:
            raise ValueError(
                f"log_score must have shape {list(want)} (x is [B, L], dim={self.graph.dim}), "
                f"got {list(log_score.shape)}"
            )
        return log_score, x

    def step_probs(self, log_score: torch.Tensor, t_index: int, x: torch.Tensor) -> torch.Tensor:
        """The step's transition probabilities, `[B, L, dim]` float64 (the torch twin; for tests).

        Args:
            log_score: log-scores at `timesteps[t_index]`, `[B, L, dim]`.
            t_index: index into `timesteps`.
            x: int64 tokens at `timesteps[t_index]`, `[B, L]`.
        """
        log_score, x = self._check_step_inputs(log_score, x)
        if self.unmasking:
            raise ValueError(
                f"step_probs is the law of a grid step; predictor={self.predictor!r} unmasks positions "
                "one event at a time (its law is tested through sample, tests/test_first_hitting.py)"
            )
        if self.remask is not None:
            from ddm.sampling.remask import remdm_step_probs

            return remdm_step_probs(self, log_score.detach(), self._check_index(t_index), x)
        kind, noise = self.step_kind(t_index)
        level = torch.full((x.shape[0],), noise, dtype=torch.float64, device=x.device)  # (B,)
        return apply_to_step(torch_steps.step_probs(kind, self.graph, x, log_score, level), x, self.proposal)

    def step(
        self,
        log_score: torch.Tensor,
        t_index: int,
        x: torch.Tensor,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        seq_offset: int = 0,
        backend: str = "auto",
        out: torch.Tensor | None = None,
    ) -> SamplerOutput:
        """Take the reverse step at `timesteps[t_index]`.

        Args:
            log_score: the network's log-scores at `x` and `sigmas[t_index]`, `[B, L, dim]`; the entry at
                the current token is ignored.
            t_index: index into `timesteps` (0 for the noisiest time).
            x: int64 tokens at `timesteps[t_index]`, `[B, L]`.
            seed: keys the draw: row `b` uses `(seed, t_index, seq_offset + b, position)`, so a row does
                not depend on the batch it is in. When None, a seed is drawn from `generator`.
            generator: torch generator to draw the seed from when `seed` is None (torch's global generator
                when both are None).
            seq_offset: added to the row index in the key (to split one batch into several calls).
            backend: `"auto"` (Rust for CPU tensors when the core is built, else torch), `"rust"` or
                `"torch"`.
            out: optional int64 `[B, L]` CPU tensor that the Rust step writes into (it must not share
                memory with `x` or `log_score`); `sample` passes two buffers in turn. Ignored by the torch
                step and by ReMDM.

        Returns:
            `SamplerOutput` with `prev_sample`, int64 `[B, L]` on the device of `x` (`out` when used).
        """
        log_score, x = self._check_step_inputs(log_score, x)
        k = self._check_index(t_index)
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        seed = random_seed(generator) if seed is None else check_seed(seed)
        if isinstance(seq_offset, bool) or not isinstance(seq_offset, int) or seq_offset < 0:
            raise ValueError(f"seq_offset must be an int >= 0, got {seq_offset!r}")
        use_rust = resolve_backend(backend, x.device)
        if self.unmasking:
            return SamplerOutput(
                prev_sample=self._unmasking_step(log_score.detach(), k, x, seed, seq_offset, use_rust)
            )
        if self.remask is not None:
            from ddm.sampling.remask import remdm_step

            out = remdm_step(
                self, log_score.detach(), k, x, seed=seed, seq_offset=seq_offset, use_rust=use_rust
            )
            return SamplerOutput(prev_sample=out)
        kind, noise = self.step_kind(k)
        if use_rust:
            from ddm.sampling import _native  # on demand: only this branch needs the compiled core

            xc = x.detach().to("cpu").contiguous()
            ls = log_score.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (B, L, dim)
            level = self._step_levels(x.shape[0])[k]  # (B,) a row of the grid's levels, no new tensor
            if out is not None and out.data_ptr() == xc.data_ptr():
                raise ValueError("out must not share memory with x")
            if self.proposal.neutral_for(self.graph.dim):
                new = _native.reverse_step(
                    kind, self.graph, xc, ls, level, seed, k, seq_offset=seq_offset, out=out
                )
            else:
                new = _native.proposal_step(
                    kind, self.graph, xc, ls, level, seed, k, self.proposal, seq_offset=seq_offset, out=out
                )
            return SamplerOutput(prev_sample=new.to(x.device))
        probs = self.step_probs(log_score.detach(), k, x)  # (B, L, dim) float64
        rows = torch.arange(x.shape[0], device=x.device, dtype=torch.int64) + seq_offset
        u = _rng.uniforms(seed, _rng.STREAM_STEP, k, rows, x.shape[1])  # (B, L)
        return SamplerOutput(prev_sample=inverse_cdf(probs, u))

    def _unmasking_step(
        self, log_score: torch.Tensor, k: int, x: torch.Tensor, seed: int, seq_offset: int, use_rust: bool
    ) -> torch.Tensor:
        """One call of first hitting or confidence: the same functions `ddm.sample` runs, so that this loop
        and `sample` give the same tokens for the same seed."""
        mask_id = self.graph.dim - 1
        rows = torch.arange(x.shape[0], dtype=torch.int64, device=x.device) + seq_offset
        opts = self.unmasking_options
        if self.predictor == "confidence":
            from ddm.sampling.confidence import confidence_commit

            self._free_count(k, x)  # keeps the count of the first call for the next levels
            steps = self.num_inference_steps
            assert steps is not None
            return confidence_commit(
                self.graph, log_score, x, seed=seed, step=k, rows=rows, proposal=self.proposal,
                use_rust=use_rust, order=opts["order"], opts={n: opts[n] for n in
                ("tokens_per_step", "threshold", "entropy_bound")}, calls_left=steps - k,
            )  # fmt: skip
        from ddm.sampling.first_hitting import draw_masked, event_cells, next_event

        u, levels = self._event_levels(seed, rows, x.shape[1])  # (B, L) each
        masked = x == mask_id  # (B, L)
        if opts["group_by_step"]:
            where = masked & (event_cells(levels, self._sigma_bar.to(x.device)) == k)  # (B, L)
            sigma = self._sigma_bar[k].to(x.device).expand(x.shape[0])  # (B,)
        else:
            pos, has = next_event(x, u, mask_id)  # (B,)
            where = torch.zeros_like(masked).scatter_(1, pos[:, None], has[:, None])  # (B, L)
            sigma = levels.gather(1, pos[:, None])[:, 0]  # (B,)
        return draw_masked(self.graph, log_score, x, where, sigma, seed=seed, step=k, rows=rows,
                           proposal=self.proposal, use_rust=use_rust)  # fmt: skip

    # ---- the two ends of the process --------------------------------------------------------------------
    def init_noise(
        self,
        batch_size: int,
        seq_len: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        seq_offset: int = 0,
        device: Any = None,
    ) -> torch.Tensor:
        """Draw the start of the reverse process from the limit law, `[batch_size, seq_len]` int64.

        Absorbing: all MASK. Uniform: a uniform id at every position, keyed by `(seed, seq_offset + b, i)`
        (the same on every backend and device).
        """
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if self.graph.absorbing:
            return torch.full((batch_size, seq_len), self.graph.dim - 1, dtype=torch.int64, device=device)
        seed = random_seed(generator) if seed is None else check_seed(seed)
        rows = torch.arange(batch_size, dtype=torch.int64, device=device) + seq_offset
        u = _rng.uniforms(seed, _rng.STREAM_LIMIT, 0, rows, seq_len)  # (B, L)
        return (u * self.graph.dim).floor().to(torch.int64).clamp_(max=self.graph.dim - 1)

    def add_noise(
        self,
        x0: torch.Tensor,
        t: Any,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        seq_offset: int = 0,
    ) -> torch.Tensor:
        """The forward process: draw `x_t ~ p_{t|0}(. | x0)` independently at every position.

        Args:
            x0: int64 clean tokens, `[B, L]`.
            t: time in `[0, 1]`: a float, or a `[B]` tensor (one time per sequence).
            seed: keys the draw by `(seed, seq_offset + b, position)`; drawn from `generator` when None.
            generator: torch generator for the seed when `seed` is None.
            seq_offset: added to the row index in the key.

        Returns:
            int64 `[B, L]` tokens on the device of `x0`.
        """
        if not isinstance(x0, torch.Tensor) or x0.dtype != torch.int64 or x0.dim() != 2:
            raise TypeError("x0 must be an int64 tensor of shape [B, L]")
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        seed = random_seed(generator) if seed is None else check_seed(seed)
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() == 1 and t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must be a float or a [B] tensor with B={x0.shape[0]}, got {list(t.shape)}")
        if t.dim() > 1:
            raise ValueError(f"t must be a float or a [B] tensor, got shape {list(t.shape)}")
        sigma = self.schedule.total_noise(t).to(torch.float64).expand(x0.shape[0])  # (B,)
        if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= self.graph.dim):
            raise ValueError(f"x0 holds ids outside [0, {self.graph.dim - 1}]")
        if x0.device.type == "cpu" and native_available():
            from ddm.sampling import _native  # the compiled core, only where it is built

            # the Rust twin of the two lines below, bit-identical (tests/test_parity.py), 8-19x faster
            return _native.corrupt(
                self.graph,
                x0.contiguous(),
                sigma.contiguous(),
                seed,
                0,
                seq_offset,
                stream=_rng.STREAM_FORWARD,
            )
        rows = torch.arange(x0.shape[0], device=x0.device, dtype=torch.int64) + seq_offset
        u = _rng.uniforms(seed, _rng.STREAM_FORWARD, 0, rows, x0.shape[1])  # (B, L)
        return self.graph.corrupt(x0, sigma.to(x0.device)[:, None], u)  # docs/math.md section 2


def resolve_backend(backend: Any, device: torch.device) -> bool:
    """Whether to run a step in Rust for tensors on `device`, given `backend` (raises on a bad name)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "rust":
        if not native_available():
            raise RuntimeError(
                "backend='rust' needs the compiled core ddm._core (build it with `make build`)"
            )
        return True
    return torch.device(device).type == "cpu" and native_available()
