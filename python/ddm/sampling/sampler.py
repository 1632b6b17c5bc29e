"""A scheduler-style sampler for the SEDD reverse process (docs/math.md section 5), as in diffusers.

`Sampler` holds the time grid and the predictor, and turns one network output into one reverse step:

```python
sampler = Sampler(graph, schedule, predictor="analytic")
sampler.set_timesteps(128)
x = sampler.init_noise(batch_size, seq_len, seed=0)
with torch.no_grad():
    for k in range(len(sampler.timesteps)):
        log_score = model(x, sampler.noise_level(k, batch_size))  # (B, L, dim)
        x = sampler.step(log_score, k, x, seed=0).prev_sample
```

`ddm.sampling.sample` is this loop, plus conditioning, caching and argument checks. The same loop runs
the unmasking predictors (`"first_hitting"`, `"confidence"`), whose number of calls and noise levels depend
on the tokens:

```python
k = 0
with torch.no_grad():
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
step runs in the Rust core; elsewhere, or with `backend="torch"`, in torch (`ddm.sampling.ops`). Both
backends draw from the same law; they do not give the same bits.

The algorithm is a `ddm.sampling.predictors.Predictor` (a registered name with its options, or an
object): the `Sampler` holds the time grid (`Grid`) and hands each call to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddm import _rng
from ddm import graphs as _graphs
from ddm import schedules as _schedules
from ddm._categorical import inverse_cdf
from ddm.errors import InvalidArgument
from ddm.sampling import predictors
from ddm.sampling.ops import BACKENDS, get_ops, native_available
from ddm.sampling.predictors import Grid, Predictor

__all__ = [
    "BACKENDS",
    "PREDICTORS",
    "Sampler",
    "SamplerOutput",
    "check_seed",
    "inverse_cdf",
    "native_available",
    "random_seed",
]

PREDICTORS = ("analytic", "euler")  # the grid predictors (the default rows of `ddm report`: see there)
_SEED_LIMIT = 2**64
_SAMPLER_KEYS = ("graph", "schedule", "predictor", "eps", "denoise")


@dataclass
class SamplerOutput:
    """What `Sampler.step` returns.

    Attributes:
        prev_sample: int64 tokens after the step, `[B, L]` (the sample at the next, less noisy time).
    """

    prev_sample: torch.Tensor


def random_seed(generator: torch.Generator | None = None) -> int:
    """A random 63-bit seed drawn from `generator` (torch's global generator when None).

    Drawing from torch's generator makes `torch.manual_seed` reproduce an unseeded run.
    """
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64).item())


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return `seed` as an int after checking that it lies in `[0, 2^64)`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"{name} must be an int in [0, 2**64), got {type(seed).__name__}")
    if not 0 <= seed < _SEED_LIMIT:
        raise InvalidArgument(f"{name} must lie in [0, 2**64), got {seed}")
    return seed


def _as_graph(graph: Any) -> _graphs.Graph:
    if isinstance(graph, dict):
        return _graphs.from_config(graph)
    if not isinstance(graph, _graphs.Graph):
        raise InvalidArgument(
            f"graph must be a ddm.graphs.Graph or its config dict, got {type(graph).__name__}"
        )
    return graph


def _as_schedule(schedule: Any) -> _schedules.Schedule:
    if isinstance(schedule, dict):
        return _schedules.from_config(schedule)
    if not isinstance(schedule, _schedules.Schedule):
        raise InvalidArgument(
            f"schedule must be a ddm.schedules.Schedule or its config dict, got {type(schedule).__name__}"
        )
    return schedule


def _seed_of(seed: Any, generator: torch.Generator | None) -> int:
    if seed is not None and generator is not None:
        raise InvalidArgument("give seed or generator, not both")
    return random_seed(generator) if seed is None else check_seed(seed)


def _rows(batch: int, seq_offset: Any, device: Any) -> torch.Tensor:
    if isinstance(seq_offset, bool) or not isinstance(seq_offset, int) or seq_offset < 0:
        raise InvalidArgument(f"seq_offset must be an int >= 0, got {seq_offset!r}")
    return torch.arange(batch, dtype=torch.int64, device=device) + seq_offset


class Sampler:
    """The SEDD reverse process as a scheduler: a time grid plus a predictor (docs/math.md section 5).

    Args:
        graph: the forward graph (`ddm.graphs.Uniform` / `Absorbing`) or its config dict.
        schedule: the noise schedule (`ddm.schedules.LogLinear` / `Geometric`) or its config dict.
        predictor: a registered name (`ddm.sampling.predictors.names()`: `"analytic"`, `"euler"`,
            `"first_hitting"`, `"confidence"`, `"remdm"`) or a `Predictor` object. The unmasking
            predictors (first hitting, confidence) let the tokens decide when they are done
            (`finished(x, k)`) and the noise level of each call (`noise_level(k, B, x=x, seed=seed)`);
            with the same seed the loop gives `ddm.sample`'s tokens.
        eps: the last time of the grid, in `(0, 1)`.
        denoise: end with a denoising step at `t = eps` that removes all remaining noise (absorbing: no
            MASK is left).
        **options: the predictor's options (the fields of its `config_class`: `temperature`, `top_k`,
            `top_p`, and `group_by_step`, `tokens_per_step`, `threshold`, `order`, `entropy_bound`,
            `remask`, `remask_schedule` for the predictors that have them; see `ddm.sample`).
            `remask=eta` on a grid predictor selects ReMDM.
    """

    def __init__(
        self,
        graph: Any,
        schedule: Any,
        predictor: Any = "analytic",
        eps: float = 1e-5,
        denoise: bool = True,
        **options: Any,
    ) -> None:
        self.graph = _as_graph(graph)
        self.schedule = _as_schedule(schedule)
        self.predictor: Predictor = predictors.build(predictor, **options)
        self.predictor.check_graph(self.graph)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise InvalidArgument(f"eps must be a float, got {type(eps).__name__}")
        if not 0.0 < float(eps) < 1.0:
            raise InvalidArgument(f"eps must lie in (0, 1), got {eps}")
        if not isinstance(denoise, bool):
            raise InvalidArgument(f"denoise must be a bool, got {type(denoise).__name__}")
        self.eps = float(eps)
        self.denoise = denoise
        self.grid: Grid | None = None
        self.timesteps = torch.empty(0, dtype=torch.float64)
        self.sigmas = torch.empty(0, dtype=torch.float64)
        self._n_free: torch.Tensor | None = None  # confidence: the MASK count of each row at call 0

    @property
    def proposal(self) -> Any:
        """The predictor's proposal transform (temperature, top-k, top-p)."""
        return self.predictor.proposal

    @property
    def unmasking(self) -> bool:
        """Whether the predictor unmasks positions (first hitting, confidence) instead of stepping on the
        grid: its number of calls is set by the tokens (`finished`), and `noise_level` needs them."""
        return self.predictor.unmasking

    @property
    def num_inference_steps(self) -> int | None:
        """The steps of the grid (None before `set_timesteps`)."""
        return None if self.grid is None else self.grid.steps

    @property
    def times(self) -> torch.Tensor:
        """The whole grid `linspace(1, eps, steps + 1)`, float64."""
        return torch.empty(0, dtype=torch.float64) if self.grid is None else self.grid.times

    # ---- config -----------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; `Sampler.from_config(s.config)` rebuilds the sampler. The
        predictor's options are the fields of its config dataclass."""
        return {
            "graph": self.graph.to_config(),
            "schedule": self.schedule.to_config(),
            "predictor": self.predictor.name,
            "eps": self.eps,
            "denoise": self.denoise,
            **self.predictor.options(),
        }

    def to_config(self) -> dict[str, Any]:
        """Same as `config`."""
        return self.config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sampler:
        """Rebuild a sampler from its `config` dict (one with every predictor's options, as older
        versions wrote, is read too: the options of other predictors must be at their defaults)."""
        if not isinstance(config, dict):
            raise InvalidArgument(f"config must be a dict, got {type(config).__name__}")
        extra = set(config) - set(_SAMPLER_KEYS) - set(predictors.option_fields())
        if extra:
            raise InvalidArgument(f"unknown sampler config keys {sorted(extra)}")
        if "graph" not in config or "schedule" not in config:
            raise InvalidArgument("sampler config needs 'graph' and 'schedule'")
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"Sampler(graph={self.graph!r}, schedule={self.schedule!r}, predictor={self.predictor!r}, "
            f"eps={self.eps}, denoise={self.denoise}, steps={self.num_inference_steps})"
        )

    # ---- the time grid ----------------------------------------------------------------------------------
    def set_timesteps(self, steps: int) -> None:
        """Build the grid `t_k = linspace(1, eps, steps + 1)` (docs/math.md section 5).

        Sets `grid` (`ddm.sampling.predictors.Grid`), `timesteps` (the times at which a grid predictor
        calls the network: the whole grid with denoising, all but the last time without) and `sigmas`
        (`sigma_bar` at `timesteps`, the noise level to give the network), all float64 on the CPU.

        Args:
            steps: the number of predictor steps, >= 1.
        """
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise InvalidArgument(f"steps must be an int, got {type(steps).__name__}")
        if steps < 1:
            raise InvalidArgument(f"steps must be >= 1, got {steps}")
        self.grid = Grid.build(self.graph, self.schedule, steps, self.eps, self.denoise)
        self.timesteps = self.grid.times[: self.grid.n_eval]
        self.sigmas = self.grid.sigma_bar[: self.grid.n_eval]

    def _grid(self, what: str) -> Grid:
        if self.grid is None:
            raise RuntimeError(f"call set_timesteps(steps) before {what}()")
        return self.grid

    def _check_index(self, t_index: Any, what: str = "step") -> int:
        grid = self._grid(what)
        if isinstance(t_index, torch.Tensor) and t_index.numel() == 1 and not t_index.is_floating_point():
            t_index = int(t_index.item())
        if isinstance(t_index, bool) or not isinstance(t_index, int):
            raise InvalidArgument(
                f"t_index must be an int index into timesteps, got {type(t_index).__name__}"
            )
        last = self.predictor.max_index(grid)
        if last is None:  # one call per event: as many as the tokens need (`finished`)
            if t_index < 0:
                raise InvalidArgument(f"t_index must be >= 0, got {t_index}")
        elif not 0 <= t_index <= last:
            raise InvalidArgument(f"t_index must lie in [0, {last}] for {last + 1} timesteps, got {t_index}")
        return t_index

    def finished(self, x: torch.Tensor, t_index: int) -> bool:
        """Whether the process is over before the call at `t_index`, given the tokens `x` there.

        Grid predictors: `t_index == len(timesteps)`. First hitting and confidence: no MASK is left in `x`
        (and, grouped by step, also at the end of the grid). The loop over every predictor is then
        `k = 0; while not sampler.finished(x, k): ...; k += 1`.
        """
        return self.predictor.finished(self._grid("finished"), x, t_index)

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
    ) -> torch.Tensor:
        """The network's noise input for the call at `t_index`, a `[batch_size]` tensor.

        Grid predictors: `sigma_bar(timesteps[t_index])` (`x` and `seed` are not needed). First hitting:
        the level of each row's next unmasking time, keyed by `(seed, seq_offset + b)` (grouped by step,
        the top of grid step `t_index`). Confidence: the level whose masking probability is each row's
        masked fraction of what was masked at the call at `t_index` 0 (the loop must start there). The
        unmasking predictors need the current tokens `x` and the `seed` of `step`.
        """
        k = self._check_index(t_index, "noise_level")
        dtype = dtype or torch.float64
        grid = self._grid("noise_level")
        if not self.unmasking:
            return self.sigmas[k].to(dtype=dtype).expand(batch_size).to(device)
        if x is None or seed is None:
            if self.predictor.name == "first_hitting" and self.predictor.config.group_by_step:
                return grid.sigma_bar[k].to(dtype=dtype).expand(batch_size).to(device)
            raise InvalidArgument(
                f"predictor={self.predictor.name!r}: noise_level(t_index, batch_size, x=x, seed=seed) needs "
                "the "
                "current tokens and the seed (the level depends on which positions are still masked)"
            )
        n_free = None
        if self.predictor.name == "confidence":
            mask_id = self.graph.mask_id
            if k == 0:
                self._n_free = (x == mask_id).sum(-1)
            if self._n_free is None or self._n_free.shape[0] != x.shape[0]:
                raise RuntimeError(
                    "predictor='confidence': the loop must start at t_index 0 with this batch (the level is "
                    "the masked fraction of what was masked at the first call)"
                )
            n_free = self._n_free
        rows = _rows(x.shape[0], seq_offset, x.device)
        level = self.predictor.noise_level(grid, k, x, seed=check_seed(seed), rows=rows, n_free=n_free)
        return level.to(dtype=dtype, device=device)

    def step_kind(self, t_index: int) -> tuple[str, float]:
        """The step taken at `t_index` by a grid predictor: `(kind, noise)` with `kind` in `{"euler",
        "analytic", "denoise"}`.

        `noise` is `rate_dt = sigma(t_k) (t_k - t_{k+1})` for Euler, `dsigma = sigma_bar(t_k) -
        sigma_bar(t_{k+1})` for the analytic step and `sigma_bar(eps)` for denoising (docs/math.md section 5).
        """
        k = self._check_index(t_index)
        if not isinstance(self.predictor, predictors.GridPredictor):
            raise InvalidArgument(
                f"step_kind is a grid predictor's; predictor={self.predictor.name!r} has none"
            )
        return self.predictor.kind(self._grid("step_kind"), k)

    # ---- one reverse step -------------------------------------------------------------------------------
    def _check_step_inputs(self, log_score: Any, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 2:
            raise InvalidArgument(
                f"x must be an int64 tensor of shape [B, L], got "
                f"{type(x).__name__ if not isinstance(x, torch.Tensor) else (x.dtype, tuple(x.shape))}"
            )
        if not isinstance(log_score, torch.Tensor) or not log_score.is_floating_point():
            raise InvalidArgument("log_score must be a floating tensor of shape [B, L, dim]")
        want = (*x.shape, self.graph.dim)
        if tuple(log_score.shape) != want:
            raise InvalidArgument(
                f"log_score must have shape {list(want)} (x is [B, L], dim={self.graph.dim}), "
                f"got {list(log_score.shape)}"
            )
        return log_score.detach(), x

    def step_probs(self, log_score: torch.Tensor, t_index: int, x: torch.Tensor) -> torch.Tensor:
        """The step's transition probabilities, `[B, L, dim]` float64 (the torch twin; for tests).

        Args:
            log_score: log-scores at `timesteps[t_index]`, `[B, L, dim]`.
            t_index: index into `timesteps`.
            x: int64 tokens at `timesteps[t_index]`, `[B, L]`.
        """
        log_score, x = self._check_step_inputs(log_score, x)
        return self.predictor.step_probs(self._grid("step_probs"), log_score, self._check_index(t_index), x)

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
        """Take the reverse step at `timesteps[t_index]` (or the unmasking predictor's call `t_index`).

        Args:
            log_score: the network's log-scores at `x` and `noise_level(t_index, ...)`, `[B, L, dim]`; the
                entry at the current token is ignored.
            t_index: index into `timesteps` (0 for the noisiest time).
            x: int64 tokens at `timesteps[t_index]`, `[B, L]`.
            seed: keys the draw: row `b` uses `(seed, t_index, seq_offset + b, position)`, so a row does
                not depend on the batch it is in. When None, a seed is drawn from `generator`.
            generator: torch generator to draw the seed from when `seed` is None (torch's global generator
                when both are None).
            seq_offset: added to the row index in the key (to split one batch into several calls).
            backend: `"auto"` (Rust for CPU tensors when the core is built, else torch), `"rust"` or
                `"torch"`.
            out: optional int64 `[B, L]` CPU tensor that the Rust grid step writes into (it must not share
                memory with `x` or `log_score`); `sample` passes two buffers in turn. Ignored elsewhere.

        Returns:
            `SamplerOutput` with `prev_sample`, int64 `[B, L]` on the device of `x` (`out` when used).
        """
        log_score, x = self._check_step_inputs(log_score, x)
        k = self._check_index(t_index)
        seed = _seed_of(seed, generator)
        rows = _rows(x.shape[0], seq_offset, x.device)
        ops = get_ops(backend, x.device, self.graph)
        new = self.predictor.step(self._grid("step"), log_score, k, x, ops=ops, seed=seed, rows=rows, out=out)
        return SamplerOutput(prev_sample=new)

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
            raise InvalidArgument("give seed or generator, not both")
        mask_id = getattr(self.graph, "mask_id", None)
        if mask_id is not None:
            return torch.full((batch_size, seq_len), mask_id, dtype=torch.int64, device=device)
        seed = random_seed(generator) if seed is None else check_seed(seed)
        rows = torch.arange(batch_size, dtype=torch.int64, device=device) + seq_offset
        u = _rng.uniforms(seed, _rng.STREAMS["limit"], 0, rows, seq_len)  # (B, L)
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
            int64 `[B, L]` tokens on the device of `x0` (bit-identical on both backends).
        """
        if not isinstance(x0, torch.Tensor) or x0.dtype != torch.int64 or x0.dim() != 2:
            raise InvalidArgument("x0 must be an int64 tensor of shape [B, L]")
        seed = _seed_of(seed, generator)
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() == 1 and t.shape[0] != x0.shape[0]:
            raise InvalidArgument(
                f"t must be a float or a [B] tensor with B={x0.shape[0]}, got {list(t.shape)}"
            )
        if t.dim() > 1:
            raise InvalidArgument(f"t must be a float or a [B] tensor, got shape {list(t.shape)}")
        sigma = self.schedule.total_noise(t).to(torch.float64).expand(x0.shape[0])  # (B,)
        if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= self.graph.dim):
            raise InvalidArgument(f"x0 holds ids outside [0, {self.graph.dim - 1}]")
        ops = get_ops("auto", x0.device, self.graph)
        return ops.corrupt(
            self.graph,
            x0.contiguous(),
            sigma.contiguous(),
            seed,
            0,
            seq_offset,
            stream=_rng.STREAMS["forward"],
        )
