"""asv benchmarks of the Python-level operations of ddm: the Rust kernel wrappers
(`ddm.sampling._native`), `ddm.sample` on a tiny model, and one training step.

The `existing` environment of `asv.conf.json` measures the ddm installed in the running interpreter
(`make build` first): `cd benches/asv && asv run --python=same` (or `asv run --python=same --quick` to run
each benchmark once). Sizes are modest, so the suite runs in a few minutes on 2 cores; the side-by-side
report against torch and the memory floor is `benches/compare.py`.
"""

from __future__ import annotations

import torch
from ddm.graphs import Absorbing, Uniform
from ddm.losses import dwdse
from ddm.model import ScoreModel
from ddm.sampling import _native
from ddm.schedules import LogLinear

GRAPHS = ["absorb", "uniform"]
DIMS = [28, 50258]


def _graph(kind: str, dim: int) -> Absorbing | Uniform:
    return Absorbing(dim - 1) if kind == "absorb" else Uniform(dim)


class KernelWrappers:
    """One reverse step or corruption through the zero-copy torch wrappers, `[4, 64]` tokens."""

    params = (GRAPHS, DIMS)
    param_names = ["graph", "dim"]

    def setup(self, kind: str, dim: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.graph = _graph(kind, dim)
        self.x = torch.randint(0, self.graph.vocab_size, (4, 64), generator=g)  # (B, L)
        if kind == "absorb":
            self.x[:, ::2] = self.graph.dim - 1  # half the positions MASK
        self.log_score = torch.empty(4, 64, dim).uniform_(-12.0, -4.0, generator=g)  # (B, L, dim)
        self.level = torch.full((4,), 1e-2, dtype=torch.float64)
        self.out = torch.empty_like(self.x)

    def time_analytic_step(self, kind: str, dim: int) -> None:
        _native.reverse_step("analytic", self.graph, self.x, self.log_score, self.level, 1, 0, out=self.out)

    def time_euler_step(self, kind: str, dim: int) -> None:
        _native.reverse_step("euler", self.graph, self.x, self.log_score, self.level, 1, 0, out=self.out)

    def time_denoise_step(self, kind: str, dim: int) -> None:
        _native.reverse_step("denoise", self.graph, self.x, self.log_score, self.level, 1, 0, out=self.out)

    def time_corrupt(self, kind: str, dim: int) -> None:
        _native.corrupt(self.graph, self.x, self.level, 1, 0, out=self.out, stream=0x5EED0003)


def _tiny_model(dim: int, seq_len: int) -> ScoreModel:
    torch.manual_seed(0)
    config = {"hidden": 64, "heads": 2, "blocks": 2, "cond_dim": 32, "seq_len": seq_len, "dropout": 0.0}
    return ScoreModel(config, Absorbing(dim - 1), LogLinear())


class Sample:
    """`ddm.sample` end to end on CPU: a tiny absorbing model, dim 28, `[4, 64]`, 16 analytic steps."""

    params = ["rust", "torch"]
    param_names = ["backend"]
    timeout = 300

    def setup(self, backend: str) -> None:
        self.model = _tiny_model(28, 64).eval()

    def time_sample(self, backend: str) -> None:
        from ddm.sampling import sample

        sample(self.model, 16, batch_size=4, seed=0, backend=backend)


class TrainStep:
    """One DWDSE training step (forward, backward, AdamW) of a tiny absorbing model, `[8, 64]` tokens."""

    timeout = 300

    def setup(self) -> None:
        self.model = _tiny_model(28, 64).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x0 = torch.randint(0, 27, (8, 64), generator=torch.Generator().manual_seed(0))
        self.gen = torch.Generator().manual_seed(1)

    def time_train_step(self) -> None:
        loss = dwdse(self.model, self.model.graph, self.model.schedule, self.x0, generator=self.gen).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
