"""ddm: score-entropy discrete diffusion (SEDD) with a fast Rust CTMC core.

The public API:

- `ddm.sample(model, steps, ...)`: generate with Euler or Tweedie tau-leaping (`ddm.sampling`).
- `ddm.train(config)`: DWDSE training from a `TrainConfig`, a dict or a TOML file (`ddm.training`).
- `ddm.likelihood_bound(model, blocks, ...)`: the likelihood bound on held-out data (`ddm.eval`).
- `ddm.load(path)`: a ddm checkpoint or a published SEDD checkpoint, ready to sample (`ddm.io`).
- `ddm.load_sedd(path)`: the SEDD reference layouts only (`ddm.io.sedd`).
- The building blocks: `Absorbing`, `Uniform` (`ddm.graphs`), `LogLinear`, `Geometric`
  (`ddm.schedules`), `dwdse` (`ddm.losses`), `ScoreModel` (`ddm.model`), `Sampler` (`ddm.sampling`).
"""

from __future__ import annotations

from ddm import graphs, losses, schedules
from ddm.eval import likelihood_bound
from ddm.graphs import Absorbing, Uniform
from ddm.io import load, load_sedd
from ddm.losses import dwdse
from ddm.model import ScoreModel
from ddm.sampling import Sampler, sample
from ddm.schedules import Geometric, LogLinear
from ddm.training import train

__version__ = "0.1.0"

__all__ = [
    "Absorbing",
    "Geometric",
    "LogLinear",
    "Sampler",
    "ScoreModel",
    "Uniform",
    "__version__",
    "dwdse",
    "graphs",
    "likelihood_bound",
    "load",
    "load_sedd",
    "losses",
    "sample",
    "schedules",
    "train",
]
