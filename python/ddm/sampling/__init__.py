"""Sampling: the SEDD reverse process (docs/math.md section 5).

- `sample(model, steps, ...)`: generate sequences, with conditioning (prefix, suffix, infill), caching for
  time-independent absorbing models, and the step in Rust (CPU) or torch (any device).
- `Sampler`: the same steps as a diffusers-style scheduler (`set_timesteps`, `step`, `add_noise`) for
  users who write their own loop.
- `predictors`: one module per predictor (analytic, euler, first_hitting, confidence, remdm), each with a
  frozen dataclass of its options, and the registry a new one joins with one `register` call.
- `ops`: the one seam to a backend (`TorchOps`, `RustOps`), resolved once per `sample` call.
"""

from __future__ import annotations

from ddm.sampling.sample import SampleStats, sample
from ddm.sampling.sampler import Sampler, SamplerOutput

__all__ = ["sample", "SampleStats", "Sampler", "SamplerOutput"]
