"""What a predictor is: a `Predictor` with a frozen `Config` of its options, and the registry.

A predictor turns one network output into the next tokens. Every sampler loop (`ddm.sample`'s grid loop,
its unmasking loop, the block sampler and the scheduler-style `Sampler`) drives it through one interface,
given the run's `Grid` (the time grid) and an `Ops` (the backend, `ddm.sampling.ops`):

```python
k = 0
while not predictor.finished(grid, x, k):
    sigma = predictor.noise_level(grid, k, x, seed=seed, rows=rows, n_free=n_free)   # (B,)
    x = predictor.step(grid, model(x, sigma), k, x, ops=ops, seed=seed, rows=rows)
    k += 1
```

A grid predictor (`GridPredictor`: analytic, Euler, ReMDM) takes one step per point of the grid; an
unmasking predictor (first hitting, confidence) unmasks positions until none is left, so the tokens set
how many calls it makes and at which noise levels. A predictor keeps no state between calls: what a call
needs is in its arguments.

A new predictor is one module with a `Predictor` subclass (and, if it has options, a `Config` subclass
whose fields carry a default, a comment and `help` metadata) plus one `register` call. The command line,
`ddm report` and `Sampler.to_config` read the options from the `Config` fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ddm.errors import InvalidArgument
from ddm.sampling import torch_steps
from ddm.sampling.proposal import Proposal, apply_to_step, make_proposal

__all__ = [
    "Config",
    "Grid",
    "GridPredictor",
    "Predictor",
    "get",
    "names",
    "option_fields",
    "option_types",
    "register",
    "unregister",
]


@dataclass(frozen=True)
class Grid:
    """The time grid `t_k = linspace(1, eps, steps + 1)` of a run (docs/math.md section 5).

    Attributes:
        graph: the forward graph.
        schedule: the noise schedule.
        steps: the number of predictor steps.
        eps: the last time.
        denoise: whether a last call at `t = eps` removes all remaining noise.
        times: float64 `[steps + 1]`, the grid.
        sigma_bar: float64 `[steps + 1]`, the total noise on the grid (decreasing).
        rates: float64 `[steps + 1]`, the noise rate `sigma(t)` on the grid.
    """

    graph: Any
    schedule: Any
    steps: int
    eps: float
    denoise: bool
    times: torch.Tensor
    sigma_bar: torch.Tensor
    rates: torch.Tensor

    @classmethod
    def build(cls, graph: Any, schedule: Any, steps: int, eps: float, denoise: bool) -> Grid:
        """The grid of `steps` steps from `t = 1` to `t = eps`."""
        t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)  # (steps + 1,)
        sigma_bar, sigma = schedule(t)
        return cls(
            graph, schedule, steps, eps, denoise, t, sigma_bar.to(torch.float64), sigma.to(torch.float64)
        )

    @property
    def n_eval(self) -> int:
        """The network calls of a grid predictor: `steps + 1` with denoising, `steps` without."""
        return self.steps + 1 if self.denoise else self.steps


@dataclass(frozen=True)
class Config:
    """The options every predictor has: the transform of its proposal law (`ddm.sampling.proposal`)."""

    temperature: float = field(
        default=1.0,
        metadata={"help": "proposal temperature, >= 0 (1: the plain step, 0: greedy)", "metavar": "T"},
    )
    top_k: int | None = field(
        default=None, metadata={"help": "keep the K most likely tokens of the proposal", "metavar": "K"}
    )
    top_p: float | None = field(
        default=None, metadata={"help": "keep the nucleus of mass P in (0, 1]", "metavar": "P"}
    )

    def __post_init__(self) -> None:
        p = make_proposal(self.temperature, self.top_k, self.top_p)  # InvalidArgument naming the option
        object.__setattr__(self, "temperature", p.temperature)
        object.__setattr__(self, "top_p", p.top_p)

    @property
    def proposal(self) -> Proposal:
        """The proposal transform of these options."""
        return Proposal(self.temperature, self.top_k, self.top_p)


class Predictor(ABC):
    """A reverse-process predictor (see the module docstring).

    Args:
        config: its options as a `config_class` instance; or give them as keywords instead.
        **options: the fields of `config_class` (an unknown one is an `InvalidArgument` naming it).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[Config]] = Config
    needs_mask: ClassVar[bool] = False  # unmasks MASK positions: the absorbing graph only
    unmasking: ClassVar[bool] = False  # the tokens set the calls (not one step per grid point)

    def __init__(self, config: Config | None = None, **options: Any) -> None:
        if config is None:
            unknown = sorted(set(options) - {f.name for f in dataclasses.fields(self.config_class)})
            if unknown:
                raise InvalidArgument(_not_an_option(unknown[0], self.name, self.config_class))
            config = self.config_class(**options)
        elif options:
            raise InvalidArgument(f"give a config or options, not both (got {sorted(options)})")
        elif type(config) is not self.config_class:
            raise InvalidArgument(
                f"config must be a {self.config_class.__name__} for predictor={self.name!r}, "
                f"got {type(config).__name__}"
            )
        self.config = config

    @property
    def proposal(self) -> Proposal:
        """The transform of the proposal law (temperature, top-k, top-p)."""
        return self.config.proposal

    def options(self) -> dict[str, Any]:
        """The config's fields, by name (JSON-serialisable)."""
        return dataclasses.asdict(self.config)

    def check_graph(self, graph: Any) -> None:
        """`InvalidArgument` when this predictor cannot run on `graph`."""
        if self.needs_mask and getattr(graph, "mask_id", None) is None:
            raise InvalidArgument(
                f"predictor={self.name!r} needs the absorbing graph: the uniform graph has no MASK to unmask"
            )

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self.config, f.name)!r}"
            for f in dataclasses.fields(self.config)
            if getattr(self.config, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    # ---- the loop interface ---------------------------------------------------------------------------
    def max_index(self, grid: Grid) -> int | None:
        """The largest valid call index `k`, or None when the tokens decide (no bound)."""
        return grid.n_eval - 1

    def total_calls(self, grid: Grid, n_free: int) -> int | None:
        """The number of calls of a run with `n_free` free positions, when known (a progress bar)."""
        return grid.n_eval

    def finished(self, grid: Grid, x: torch.Tensor, k: int) -> bool:
        """Whether the run is over before the call at index `k`, given the tokens `x` there."""
        return k >= grid.n_eval

    def active(
        self, grid: Grid, k: int, x: torch.Tensor, *, seed: int, rows: torch.Tensor
    ) -> torch.Tensor | None:
        """bool `[B]`: the rows the call at `k` needs scored (None: all of them)."""
        return None

    def noise_level(
        self,
        grid: Grid,
        k: int,
        x: torch.Tensor,
        *,
        seed: int,
        rows: torch.Tensor,
        n_free: torch.Tensor | None,
    ) -> torch.Tensor:
        """The network's noise input at call `k`, float64 `[B]` on the device of `x`.

        Args:
            grid: the time grid.
            k: the call index.
            x: int64 `[B, L]` tokens at the call.
            seed: the run's seed.
            rows: int64 `[B]` sequence indices of the key (`offset + arange(B)`).
            n_free: int64 `[B]`, each row's MASK count at the first call (None where not needed).
        """
        return grid.sigma_bar[k].expand(x.shape[0]).to(x.device)

    @abstractmethod
    def step(
        self,
        grid: Grid,
        log_score: torch.Tensor,
        k: int,
        x: torch.Tensor,
        *,
        ops: Any,
        seed: int,
        rows: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The tokens after call `k`, int64 `[B, L]` on the device of `x`.

        Args:
            grid: the time grid.
            log_score: `[B, L, dim]` log-scores at `x` and `noise_level(...)`.
            k: the call index.
            x: int64 `[B, L]` tokens.
            ops: the backend (`ddm.sampling.ops.Ops`).
            seed: the seed; the draws are keyed by `(seed, k, rows[b], i)`.
            rows: int64 `[B]` sequence indices of the key (`offset + arange(B)`).
            out: an int64 `[B, L]` CPU buffer a Rust grid step may write into.
        """

    def step_probs(self, grid: Grid, log_score: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
        """The law of the step at `k`, `[B, L, dim]` float64 (grid predictors; the torch twin)."""
        raise InvalidArgument(
            f"step_probs is the law of a grid step; predictor={self.name!r} unmasks positions one event "
            "at a time (its law is tested through sample)"
        )


class GridPredictor(Predictor):
    """A predictor that takes one step per point of the grid: the step `kind(grid, k)` in the backend."""

    @abstractmethod
    def kind(self, grid: Grid, k: int) -> tuple[str, float]:
        """`(kind, level)` of the step at `k`: `kind` in `{"euler", "analytic", "denoise"}` and its noise
        argument (`rate_dt`, `dsigma` or `sigma_bar(eps)`)."""

    def step(self, grid, log_score, k, x, *, ops, seed, rows, out=None):
        kind, noise = self.kind(grid, k)
        level = torch.full((x.shape[0],), noise, dtype=torch.float64, device=x.device)  # (B,)
        return ops.reverse_step(
            kind, grid.graph, x, log_score, level, seed=seed, step=k, proposal=self.proposal,
            seq_offset=int(rows[0]) if rows.numel() else 0, out=out,
        )  # fmt: skip

    def step_probs(self, grid, log_score, k, x):
        kind, noise = self.kind(grid, k)
        level = torch.full((x.shape[0],), noise, dtype=torch.float64, device=x.device)  # (B,)
        return apply_to_step(torch_steps.step_probs(kind, grid.graph, x, log_score, level), x, self.proposal)


def denoise_kind(grid: Grid, k: int) -> tuple[str, float] | None:
    """`("denoise", sigma_bar(eps))` at the last call of a denoised grid, else None."""
    return ("denoise", float(grid.sigma_bar[k])) if k == grid.steps else None


# ---- the registry -------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Predictor]] = {}


def register(cls: type[Predictor]) -> type[Predictor]:
    """Add a predictor class to the registry under `cls.name` (usable as a class decorator)."""
    if not cls.name or not isinstance(cls.name, str):
        raise InvalidArgument(f"a predictor class needs a name, got {cls.name!r} on {cls.__name__}")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, Config)):
        raise InvalidArgument(f"{cls.__name__}.config_class must be a subclass of Config")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a predictor from the registry (a test's toy predictor; unknown names are ignored)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered predictor names, in registration order."""
    return tuple(_REGISTRY)


def get(name: Any) -> type[Predictor]:
    """The predictor class registered as `name` (`InvalidArgument` listing the names otherwise)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise InvalidArgument(f"predictor must be one of {names()} or a Predictor, got {name!r}")
    return _REGISTRY[name]


def option_fields() -> dict[str, tuple[dataclasses.Field, tuple[str, ...]]]:
    """Every option of every registered predictor: `name -> (field, the predictors that have it)`,
    in the order of first appearance (the command line and `ddm report` read them from here)."""
    out: dict[str, tuple[dataclasses.Field, tuple[str, ...]]] = {}
    for pname, cls in _REGISTRY.items():
        for f in dataclasses.fields(cls.config_class):
            prev = out.get(f.name)
            out[f.name] = (prev[0] if prev else f, (prev[1] if prev else ()) + (pname,))
    return out


def option_types() -> dict[str, type]:
    """Every registered option's scalar type, read from its config field's annotation (`int | None` ->
    `int`): the command line and `ddm report` parse values with it."""
    out: dict[str, type] = {}
    for cls in _REGISTRY.values():
        for name, hint in typing.get_type_hints(cls.config_class).items():
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = next(a for a in typing.get_args(hint) if a is not type(None))
            out.setdefault(name, hint)
    return out


def _not_an_option(key: str, name: str, config_class: type[Config]) -> str:
    owners = option_fields().get(key, (None, ()))[1]
    valid = ", ".join(f.name for f in dataclasses.fields(config_class))
    if owners:
        owner = "/".join(map(repr, owners))
        return f"{key} is an option of predictor={owner}, not {name!r} (its options: {valid})"
    return f"unknown option {key!r} for predictor={name!r} (its options: {valid})"
