"""ddm: score-entropy discrete diffusion (SEDD) with a fast Rust CTMC core.

The public API:

- `ddm.sample(model, steps, ...)`: generate with Euler or Tweedie tau-leaping (`ddm.sampling`).
- `ddm.train(config)`: DWDSE training from a `TrainConfig`, a dict or a TOML file (`ddm.training`).
- `ddm.distill(teacher, DistillConfig(...))`: a few-step student of an absorbing model by SDTT
  (`ddm.training.distill`).
- `ddm.likelihood_bound(model, chunks, ...)`: the likelihood bound on held-out data (`ddm.eval`).
- `ddm.load(path_or_hub_id)`: a ddm checkpoint, a `save_pretrained` directory, a published SEDD
  checkpoint, or a Hub id `"user/repo"` through the local Hugging Face cache, ready to sample (`ddm.io`).
- `ddm.load_sedd(path)`: the SEDD reference layouts only (`ddm.io.sedd`).
- The building blocks: `Absorbing`, `Uniform` (`ddm.graphs`), `LogLinear`, `Geometric`
  (`ddm.schedules`), `dwdse` (`ddm.losses`), `ScoreModel` (`ddm.model`), `Sampler` (`ddm.sampling`).
"""

from __future__ import annotations

import os as _os
import sys as _sys

# OpenMP workers that spin after each torch op hold the cores that the next op, or the Rust core's rayon
# workers between network calls, need: on a shared 2-core machine at load 8 the demo model's forward took
# 1.3 s with 2 threads instead of 75 ms with passive waiting (BENCHMARKS.md). The policy is read
# when torch loads its OpenMP runtime, so it is set only if torch is not imported yet, and never over a
# value the user chose.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ddm import graphs, losses, schedules  # noqa: E402
from ddm.errors import DdmError  # noqa: E402
from ddm.eval import likelihood_bound  # noqa: E402
from ddm.graphs import Absorbing, Uniform  # noqa: E402
from ddm.io import load, load_sedd  # noqa: E402
from ddm.losses import dwdse  # noqa: E402
from ddm.model import ScoreModel  # noqa: E402
from ddm.sampling import Sampler, sample  # noqa: E402
from ddm.schedules import Geometric, LogLinear  # noqa: E402
from ddm.training import train  # noqa: E402
from ddm.training.distill import DistillConfig, distill  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Absorbing",
    "DdmError",
    "DistillConfig",
    "Geometric",
    "LogLinear",
    "Sampler",
    "ScoreModel",
    "Uniform",
    "__version__",
    "distill",
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
